"""Every path goes through tf.io.gfile, so gs:// (and ram://) model dirs work: a ram:// run end to end, and a scan."""

import json
import os
import re
import uuid

import gin
import pytest
import tensorflow as tf

from tests.helpers import REPO_ROOT, one_device_strategy, parse_smoke_config, scalar_events, text_tags
from trainer import train_lib

# Local-only file APIs; tf.io.gfile has an equivalent for each.
LOCAL_FILE_API = re.compile(
    r"(?<![\w.])open\(|\bos\.(path\.(exists|isfile|isdir|getsize)|makedirs|mkdir|listdir|remove|rename|replace|walk"
    r"|scandir)\(|\bshutil\.|\bglob\.glob\(|\bpathlib\b|np\.(load|save)\("
)
# h5py opens the file itself, so pretrained .h5 weights are read from local disk (reported to the lead: reading
# them through tf.io.gfile.GFile, which h5py accepts as a file object, would make gs:// work there too).
KNOWN_LOCAL_ONLY = {
    "trainer/models/pretrained.py": 1,
    # Keras' download cache (keras.utils.get_file) is a local directory; a gs:// cache is copied through gfile.
    "trainer/models/keras_weights.py": 1,
    # shutil.which: looking up a program, not a file of the run.
    "trainer/cluster/schedulers.py": 1,
    # tf2onnx, tensorflowjs_converter and Node read and write local paths: ONNX and TF.js exports need a local
    # model_dir (the SavedModel and TFLite exports do not).
    "trainer/serving/formats.py": 6,
    "trainer/serving/tfjs_export.py": 11,
}
# Tools that run on the local machine by design: benchmarks writing scratch data and logs to a temporary directory,
# and the chaos harness following its local child processes' logs.
LOCAL_TOOLS = ("devtools/bench/", "devtools/chaos.py")


def test_the_trainer_reads_and_writes_paths_through_gfile_only():
    found = {}
    for root, _, files in os.walk(os.path.join(REPO_ROOT, "trainer")):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                with open(path) as f:
                    hits = [line for line in f if LOCAL_FILE_API.search(line) and not line.lstrip().startswith("#")]
                relative = os.path.relpath(path, REPO_ROOT)
                if hits and not relative.startswith(LOCAL_TOOLS):
                    found[relative] = len(hits)
    assert found == KNOWN_LOCAL_ONLY


@pytest.mark.slow
def test_a_ram_model_dir_trains_evaluates_and_resumes(tmp_path):
    model_dir = f"ram://deeplab-{uuid.uuid4().hex}/run"
    try:
        parse_smoke_config(str(tmp_path / "data"))
        report = train_lib.run(mode="train_and_eval", model_dir=model_dir, strategy=one_device_strategy())
        assert report["step"] == 6 and report["checkpoint"] == f"{model_dir}/checkpoints/ckpt-6"
        with tf.io.gfile.GFile(f"{model_dir}/eval/metrics_step_00000006.json") as f:
            assert json.load(f)["miou"] == report["miou"]
        with tf.io.gfile.GFile(f"{model_dir}/operative_config.gin") as f:
            assert "train.steps = 6" in f.read()
        # TensorBoard reads the event files through tf.io.gfile too.
        assert [step for step, _ in scalar_events(f"{model_dir}/train")["loss"]] == [3, 6]
        assert [step for step, _ in scalar_events(f"{model_dir}/eval")["miou"]] == [3, 6]
        assert "operative_config" in text_tags(f"{model_dir}/train")

        gin.clear_config()
        parse_smoke_config(str(tmp_path / "data"), "train.steps=9")
        train_lib.run(mode="train", model_dir=model_dir, strategy=one_device_strategy())
        assert tf.train.latest_checkpoint(f"{model_dir}/checkpoints") == f"{model_dir}/checkpoints/ckpt-9"
        assert [step for step, _ in scalar_events(f"{model_dir}/train")["loss"]] == [3, 6, 9]
    finally:
        gin.clear_config()
        if tf.io.gfile.exists(model_dir):
            tf.io.gfile.rmtree(model_dir)
