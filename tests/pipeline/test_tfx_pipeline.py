"""The example TFX pipeline (ImportExampleGen → Trainer with this trainer's run_fn → Pusher) end to end under
LocalDagRunner on the smoke config, and the pushed model serves both signatures."""

import importlib.util
import os

import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import SMOKE_GIN, parse_smoke_config
from trainer.data.synthetic import synthetic_shapes
from trainer.pipeline import tfx_pipeline

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("tfx") is None,
        reason="tfx is not installed (the [tfx] extra; `make tfx-env` builds .venv-tfx, see README 'TFX')",
    ),
]


def test_pipeline_trains_and_pushes_a_model_that_serves_both_signatures(tmp_path, clear_gin):
    del clear_gin
    parse_smoke_config(str(tmp_path / "data"))
    info = synthetic_shapes()
    data_root = os.path.dirname(info.train_files[0])
    pipeline = tfx_pipeline.create_pipeline(
        "deeplab_test",
        str(tmp_path / "pipeline"),
        data_root,
        str(tmp_path / "serving"),
        gin_files=[SMOKE_GIN],
        gin_bindings=["tfrecord_dataset.num_classes = 5", "tfrecord_dataset.max_image_size = (48, 48)"],
        train_steps=3,
    )
    tfx_pipeline.run_locally(pipeline)

    (version,) = os.listdir(tmp_path / "serving")
    loaded = tf.saved_model.load(str(tmp_path / "serving" / version))
    assert set(loaded.signatures) == {"serving_default", "serve_encoded"}
    image = np.full([1, 48, 48, 3], 100, np.uint8)
    class_map = loaded.signatures["serving_default"](images=tf.constant(image))["class_map"].numpy()
    encoded = tf.io.encode_png(image[0])[tf.newaxis]
    from_bytes = loaded.signatures["serve_encoded"](image_bytes=encoded)["class_map"].numpy()
    assert class_map.shape == (1, 48, 48) and (from_bytes == class_map).all()
    assert ((class_map >= 0) & (class_map < 5)).all()
    # The trainer saw the examples TFX handed over: 3 steps of training were checkpointed.
    model_runs = tmp_path / "pipeline" / "Trainer" / "model_run"
    (run_dir,) = os.listdir(model_runs)
    assert tf.train.latest_checkpoint(str(model_runs / run_dir / "checkpoints")).endswith("-3")
