"""Every kind of bad input stops the run with an error that says what, where, what was expected and how to fix."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import REPO_ROOT, SMOKE_GIN, mirrored_strategy, one_device_strategy, parse_smoke_config
from trainer import train_lib
from trainer.common.errors import UserInputError
from trainer.data import schema

pytestmark = [pytest.mark.usefixtures("clear_gin"), pytest.mark.slow]


def _image(height, width):
    return np.random.default_rng(0).integers(0, 255, [height, width, 3], dtype=np.uint8)


def _example(image: np.ndarray, label: np.ndarray, filename: str) -> bytes:
    """Serialises without `schema.encode_example`'s checks, so tests can write the bad records users have."""
    feature = {
        schema.IMAGE_ENCODED: tf.train.Feature(bytes_list=tf.train.BytesList(value=[tf.io.encode_png(image).numpy()])),
        schema.IMAGE_FORMAT: tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"png"])),
        schema.IMAGE_HEIGHT: tf.train.Feature(int64_list=tf.train.Int64List(value=[image.shape[0]])),
        schema.IMAGE_WIDTH: tf.train.Feature(int64_list=tf.train.Int64List(value=[image.shape[1]])),
        schema.IMAGE_FILENAME: tf.train.Feature(bytes_list=tf.train.BytesList(value=[filename.encode()])),
        schema.LABEL_ENCODED: tf.train.Feature(
            bytes_list=tf.train.BytesList(value=[tf.io.encode_png(label[..., None]).numpy()])
        ),
        schema.LABEL_FORMAT: tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"png"])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _write_records(path, examples):
    with tf.io.TFRecordWriter(str(path)) as writer:
        for example in examples:
            writer.write(example)
    return str(path)


def _good_examples(count, size=48, prefix="good"):
    label = np.zeros([size, size], np.uint8)
    return [_example(_image(size, size), label, f"{prefix}_{i}.png") for i in range(count)]


def _train_on(tmp_path, train_file, eval_file, *bindings):
    parse_smoke_config(
        str(tmp_path / "unused"),
        "run.dataset = @tfrecord_dataset",
        f"tfrecord_dataset.train_pattern = '{train_file}'",
        f"tfrecord_dataset.eval_pattern = '{eval_file}'",
        "tfrecord_dataset.num_classes = 3",
        "tfrecord_dataset.max_image_size = (48, 48)",
        "input_pipeline.shuffle_buffer = 1",
        "train.steps = 2",
        "train.steps_per_loop = 2",
        *bindings,
    )
    return train_lib.run("train", str(tmp_path / "run"), strategy=one_device_strategy())


def test_missing_model_dir(tmp_path):
    parse_smoke_config(str(tmp_path / "data"))
    with pytest.raises(UserInputError, match="--model_dir is required"):
        train_lib.run("train", "", strategy=one_device_strategy())


def test_global_batch_not_divisible_by_the_replicas(tmp_path):
    parse_smoke_config(str(tmp_path / "data"), "train.global_batch_size = 3")
    with pytest.raises(UserInputError, match=r"train.global_batch_size: expected a multiple of .*\(2\), received 3"):
        train_lib.run("train", str(tmp_path / "run"), strategy=mirrored_strategy())


def test_dataset_pattern_matching_no_file(tmp_path):
    eval_file = _write_records(tmp_path / "eval.tfrecord", _good_examples(2))
    with pytest.raises(UserInputError, match="tfrecord_dataset.train_pattern: expected the pattern to match"):
        _train_on(tmp_path, tmp_path / "missing-*.tfrecord", eval_file)


def test_corrupt_tfrecord_names_the_file_and_record(tmp_path):
    train_file = _write_records(tmp_path / "train.tfrecord", _good_examples(6))
    eval_file = _write_records(tmp_path / "eval.tfrecord", _good_examples(2))
    data = bytearray(open(train_file, "rb").read())
    record_length = len(data) // 6
    data[3 * record_length + 200] ^= 0xFF  # inside the 4th record's payload
    with open(train_file, "wb") as f:
        f.write(bytes(data))
    with pytest.raises(UserInputError) as error:
        _train_on(tmp_path, train_file, eval_file, "train.global_batch_size = 2")
    message = str(error.value)
    assert "TFRecord file is corrupt" in message
    assert f"{train_file}: record #3" in message
    assert "input_pipeline.skip_corrupt_records" in message


def test_image_and_mask_of_different_sizes(tmp_path):
    bad = _example(_image(48, 48), np.zeros([40, 48], np.uint8), "mismatched.png")
    train_file = _write_records(tmp_path / "train.tfrecord", [bad] * 4)
    eval_file = _write_records(tmp_path / "eval.tfrecord", _good_examples(2))
    with pytest.raises(
        UserInputError, match=r"Bad train example: Record mismatched.png: expected the label map to have "
    ):
        _train_on(tmp_path, train_file, eval_file)


def test_label_outside_the_classes(tmp_path):
    bad = _example(_image(48, 48), np.full([48, 48], 7, np.uint8), "label7.png")
    train_file = _write_records(tmp_path / "train.tfrecord", [bad] * 4)
    eval_file = _write_records(tmp_path / "eval.tfrecord", _good_examples(2))
    with pytest.raises(
        UserInputError,
        match=r"Record label7.png: expected label values in \[0, 3\) or the ignore label 255, received 7",
    ):
        _train_on(tmp_path, train_file, eval_file)


def test_checkpoint_of_another_model_lists_mismatched_variables(tmp_path):
    data_dir = str(tmp_path / "data")
    model_dir = str(tmp_path / "run")
    parse_smoke_config(data_dir, "train.steps = 3")
    train_lib.run("train", model_dir, strategy=one_device_strategy())
    parse_smoke_config(data_dir, "train.steps = 6", "DeepLabV3Plus.aspp_filters = 16")
    with pytest.raises(UserInputError) as error:
        train_lib.run("train", model_dir, strategy=one_device_strategy())
    message = str(error.value)
    assert "does not match the model being built" in message
    # aspp_filters 8 -> 16: the ASPP kernels' output dimension differs, e.g. the 1x1 branch's [1, 1, 4, 8] -> 16.
    assert re.search(r"shape differs: model/aspp/\S+ model \[1, 1, \d+, 16\], checkpoint \[1, 1, \d+, 8\]", message)
    assert "operative_config.gin" in message


def _run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "trainer", *args],
        cwd=REPO_ROOT,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.subprocess
def test_flags_missing_model_dir_and_invalid_strategy(tmp_path):
    missing = _run_cli(f"--gin_file={SMOKE_GIN}")
    assert missing.returncode != 0
    assert "--model_dir is required" in missing.stderr
    invalid = _run_cli(f"--gin_file={SMOKE_GIN}", f"--model_dir={tmp_path}", "--strategy=mirorred")
    assert invalid.returncode != 0
    assert "--strategy" in invalid.stderr and "mirrored" in invalid.stderr


def test_skip_corrupt_records_trains_on_what_is_readable_and_reports_it(tmp_path, caplog):
    train_file = _write_records(tmp_path / "train.tfrecord", _good_examples(6))
    eval_file = _write_records(tmp_path / "eval.tfrecord", _good_examples(2))
    data = bytearray(open(train_file, "rb").read())
    data[4 * (len(data) // 6) + 200] ^= 0xFF  # inside the 5th record: 4 readable records remain
    with open(train_file, "wb") as f:
        f.write(bytes(data))
    _train_on(
        tmp_path, train_file, eval_file, "train.global_batch_size = 2", "input_pipeline.skip_corrupt_records = True"
    )
    assert tf.train.latest_checkpoint(str(tmp_path / "run" / "checkpoints")).endswith("ckpt-2")
    assert any(
        f"{train_file}: record #4" in record.getMessage() and "4 records kept" in record.getMessage()
        for record in caplog.records
    )
