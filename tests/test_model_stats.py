"""The model statistics tool: parameters and FLOPs per image."""

import pytest
import tf_keras as keras

from trainer.core.config import parse_gin
from trainer.models import DeepLabV3
from trainer.tools.model_stats import build_configured_model, model_statistics

pytestmark = pytest.mark.usefixtures("clear_gin")


def test_flops_of_a_single_convolution_are_two_per_multiply_add():
    model = keras.Sequential([keras.layers.Conv2D(8, 3, padding="same", use_bias=False, input_shape=(16, 16, 3))])
    stats = model_statistics(model, 16, 16)
    assert stats["parameters"] == 3 * 3 * 3 * 8
    assert stats["gflops_per_image"] * 1e9 == pytest.approx(2 * 16 * 16 * 8 * 3 * 3 * 3, rel=0.01)


def test_configured_model_follows_run_model_and_counts_every_parameter():
    parse_gin(
        ["configs/smoke.gin"],
        ["run.model = @DeepLabV3", "DeepLabV3.backbone = @ResNet()", "DeepLabV3.aspp_filters = 8"],
    )
    model = build_configured_model(num_classes=7)
    assert isinstance(model, DeepLabV3) and model.num_classes == 7
    stats = model_statistics(model, 48, 48)
    assert stats["parameters"] == model.count_params() > stats["trainable_parameters"] > 0
    assert 0 < stats["gflops_per_image"] < 1
