"""Tests for trainer/models/resnet.py: strides, atrous dilations, ResNet-50 size and argument checks."""

import gin
import pytest
import tensorflow as tf

from trainer.models.resnet import BottleneckBlock, ResNet

TINY = {"block_depths": (1, 1, 1, 1), "base_filters": 8}


@pytest.fixture(autouse=True)
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_feature_strides_and_channels(output_stride):
    backbone = ResNet(**TINY, output_stride=output_stride)
    features = backbone(tf.random.normal([2, 64, 64, 3]), training=False)
    assert set(features) == {"low_level", "high_level"}
    assert features["low_level"].shape == (2, 16, 16, 4 * 8)
    side = 64 // output_stride
    assert features["high_level"].shape == (2, side, side, 32 * 8)
    assert backbone.output_stride == output_stride


def _last_stage_dilations(backbone, stage=3):
    return [block.conv2.conv.dilation_rate[0] for block in backbone.stages[stage]]


def _stage_strides(backbone):
    return [stage[0].conv2.conv.strides[0] for stage in backbone.stages]


def test_atrous_dilations_follow_output_stride_and_multi_grid():
    depths = {"block_depths": (1, 1, 2, 3), "base_filters": 4}
    os16 = ResNet(**depths, output_stride=16)
    assert _stage_strides(os16) == [1, 2, 2, 1]
    assert _last_stage_dilations(os16) == [2, 2, 2]
    assert _last_stage_dilations(os16, stage=2) == [1, 1]

    grid = ResNet(**depths, output_stride=16, multi_grid=(1, 2, 4))
    assert _last_stage_dilations(grid) == [2, 4, 8]

    os8 = ResNet(**depths, output_stride=8, multi_grid=(1, 2, 4))
    assert _stage_strides(os8) == [1, 2, 1, 1]
    assert _last_stage_dilations(os8, stage=2) == [2, 2]
    assert _last_stage_dilations(os8) == [4, 8, 16]

    os32 = ResNet(**depths, output_stride=32)
    assert _stage_strides(os32) == [1, 2, 2, 2]
    assert _last_stage_dilations(os32) == [1, 1, 1]


def test_multi_grid_cycles_over_a_shorter_last_stage():
    assert _last_stage_dilations(ResNet(**TINY, multi_grid=(3, 5))) == [6]
    longer = ResNet(block_depths=(1, 1, 1, 5), base_filters=4, multi_grid=(1, 2))
    assert _last_stage_dilations(longer) == [2, 4, 2, 4, 2]


def test_resnet50_parameter_count():
    backbone = ResNet()
    backbone(tf.zeros([1, 32, 32, 3]), training=False)
    trainable = sum(int(tf.size(w)) for w in backbone.trainable_weights)
    # torchvision resnet50 without its fc head (25,557,032 - 2,049,000): same bias-free v1 bottleneck net.
    assert trainable == 23_508_032
    assert abs(backbone.count_params() - 23.5e6) / 23.5e6 < 0.01
    assert len(backbone.stages) == 4
    assert [len(stage) for stage in backbone.stages] == [3, 4, 6, 3]


def test_bottleneck_projection_and_identity():
    projected = BottleneckBlock(4, strides=2, use_projection=True)
    assert projected(tf.random.normal([1, 8, 8, 3])).shape == (1, 4, 4, 16)
    identity = BottleneckBlock(4)
    x = tf.random.normal([1, 8, 8, 16])
    y = identity(x)
    assert y.shape == x.shape and identity.shortcut is None
    assert float(tf.reduce_min(y)) >= 0.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"output_stride": 4}, r"expected `output_stride` in \(8, 16, 32\), received 4"),
        ({"block_depths": (1, 1, 1)}, r"expected `block_depths` to have 4 entries"),
        ({"block_depths": (1, 0, 1, 1)}, r"expected `block_depths\[...\]` to be a positive int, received 0"),
        ({"base_filters": 0}, r"expected `base_filters` to be a positive int, received 0"),
        ({"multi_grid": ()}, r"expected `multi_grid` to be a non-empty sequence"),
        ({"output_stride": 32, "multi_grid": (2, 4)}, r"expected multi_grid\[0\] == 1"),
    ],
)
def test_invalid_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ResNet(**{**TINY, **kwargs})


def test_config_round_trip_and_gin():
    backbone = ResNet(block_depths=(2, 1, 1, 3), base_filters=4, output_stride=8, multi_grid=(1, 2, 4))
    config = backbone.get_config()
    assert config["block_depths"] == (2, 1, 1, 3)
    assert (config["base_filters"], config["output_stride"], config["multi_grid"]) == (4, 8, (1, 2, 4))
    # A JSON round trip turns tuples into lists; those must be accepted too.
    clone = ResNet.from_config({**config, "block_depths": [2, 1, 1, 3], "multi_grid": [1, 2, 4]})
    assert clone.get_config() == config

    gin.parse_config("ResNet.block_depths = (1, 1, 1, 1)\nResNet.base_filters = 4\nResNet.output_stride = 8")
    configured = ResNet()
    assert (configured.block_depths, configured.base_filters, configured.output_stride) == (
        (1, 1, 1, 1),
        4,
        8,
    )
