"""A tiny trained run shared by the export tests: configs/smoke.gin trained for its 6 steps (seconds)."""

import dataclasses
import os

import gin
import pytest
import tensorflow as tf
import tf_keras as keras

from tests.helpers import one_device_strategy, parse_smoke_config
from trainer import train_lib
from trainer.data.synthetic import synthetic_shapes
from trainer.models import DeepLabV3Plus
from trainer.storage import checkpoints


@dataclasses.dataclass(frozen=True)
class TrainedRun:
    data_dir: str
    model_dir: str
    step: int = 6

    def parse_config(self, *bindings: str) -> None:
        """Loads the config the run was trained with, plus `bindings`."""
        parse_smoke_config(self.data_dir, *bindings)

    def restored_model(self, checkpoint: str | None = None) -> keras.Model:
        """The trained model in memory (the latest checkpoint unless `checkpoint`); parses the config first."""
        self.parse_config()
        model = DeepLabV3Plus(num_classes=synthetic_shapes().num_classes)
        model(tf.zeros([1, 48, 48, 3]), training=False)
        checkpoints.restore_model_weights(model, checkpoint or tf.train.latest_checkpoint(self.checkpoint_dir), "test")
        return model

    @property
    def checkpoint_dir(self) -> str:
        return os.path.join(self.model_dir, "checkpoints")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> TrainedRun:
    run = TrainedRun(
        data_dir=str(tmp_path_factory.mktemp("export_data")),
        model_dir=str(tmp_path_factory.mktemp("export_run") / "run"),
    )
    run.parse_config()
    train_lib.run("train", run.model_dir, strategy=one_device_strategy())
    gin.clear_config()
    return run


@pytest.fixture(autouse=True)
def _every_export_test_clears_gin(clear_gin):
    """Applies the suite's gin-clearing fixture to every export test."""
    del clear_gin
