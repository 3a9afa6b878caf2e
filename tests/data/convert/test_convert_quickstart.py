"""The quickstart config trains, unchanged, on a converted (fake) PASCAL VOC tree."""

import os

import gin
import numpy as np
import pytest

from tests.helpers import REPO_ROOT, one_device_strategy
from trainer import train_lib
from trainer.data.convert import voc, writer

pytestmark = [pytest.mark.usefixtures("clear_gin"), pytest.mark.slow]

# Only the length of the run and the width of the model change; the dataset is the converted VOC tree.
TINY_RUN = (
    "train.steps = 2",
    "optimizer.warmup_steps = 1",
    "train.global_batch_size = 2",
    "train.steps_per_loop = 1",
    "train.checkpoint_every_steps = 2",
    "evaluation.every_steps = 2",
    "evaluation.global_batch_size = 2",
    "ResNet.base_filters = 4",
    "DeepLabV3Plus.aspp_filters = 8",
    "DeepLabV3Plus.low_level_filters = 4",
    "DeepLabV3Plus.decoder_filters = 8",
)


def test_quickstart_config_trains_and_evaluates_on_converted_voc(fake_voc, tmp_path):
    data_dir = str(tmp_path / "voc_tfrecords")
    writer.write_dataset(voc.voc_source(fake_voc.root), data_dir)
    gin.clear_config()
    gin.parse_config_files_and_bindings(
        [os.path.join(REPO_ROOT, "configs", "quickstart.gin")],
        ["run.dataset = @converted_dataset", f"converted_dataset.data_dir = '{data_dir}'", *TINY_RUN],
    )
    model_dir = str(tmp_path / "run")
    report = train_lib.run("train_and_eval", model_dir, strategy=one_device_strategy())
    assert report["step"] == 2 and report["num_examples"] == 2
    assert set(report["per_class_iou"]) == set(voc.CLASS_NAMES)
    assert 0.0 <= report["miou"] <= 1.0 and np.isfinite(report["pixel_accuracy"])
    assert os.path.exists(os.path.join(model_dir, "checkpoints", "ckpt-2.index"))
