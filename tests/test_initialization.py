"""Initialising a fresh model from local files, wired into run()."""

import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import one_device_strategy, parse_smoke_config
from trainer import train_lib
from trainer.common.errors import UserInputError
from trainer.core.initialization import InitConfig, initialize_model
from trainer.models import DeepLabV3Plus, ResNet

pytestmark = pytest.mark.usefixtures("clear_gin")


def _tiny(num_classes):
    model = DeepLabV3Plus(
        num_classes,
        backbone=ResNet(block_depths=(1, 1, 1, 1), base_filters=4),
        aspp_filters=8,
        aspp_rates=(1, 2, 3),
        low_level_filters=4,
        decoder_filters=8,
    )
    model(tf.zeros([1, 32, 32, 3]))
    return model


def test_fine_tuning_from_a_checkpoint_keeps_everything_but_a_resized_classifier(tmp_path):
    source = _tiny(21)
    tf.train.Checkpoint(model=source).save(str(tmp_path / "ckpt"))
    target = _tiny(5)
    fresh_classifier = target.classifier.get_weights()
    initialize_model(target, InitConfig(checkpoint=str(tmp_path), checkpoint_parts="all"))
    for a, b in zip(source.backbone.get_weights(), target.backbone.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(source.decoder.get_weights(), target.decoder.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(fresh_classifier, target.classifier.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_two_sources_of_initial_weights_are_rejected(tmp_path):
    with pytest.raises(UserInputError, match="at most one source"):
        InitConfig(keras_h5="a.h5", checkpoint="b")


def test_run_initialises_a_fresh_model_and_names_a_missing_weights_file(tmp_path):
    missing = tmp_path / "resnet50_notop.h5"
    parse_smoke_config(str(tmp_path / "data"), f"init.keras_h5 = '{missing}'")
    with pytest.raises(UserInputError, match="resnet50_notop.h5"):
        train_lib.run("train", str(tmp_path / "run"), strategy=one_device_strategy())
