"""Tests for trainer/models/resnet.py: strides, atrous dilations, stems, keras-equal sizes and argument checks."""

import gin
import pytest
import tensorflow as tf
import tf_keras as keras

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
    # As in keras.applications, a stage downsamples in the first 1×1 conv (and its projection shortcut).
    assert all(stage[0].conv1.conv.strides == stage[0].shortcut.conv.strides for stage in backbone.stages)
    assert all(block.conv2.conv.strides == (1, 1) for stage in backbone.stages for block in stage)
    return [stage[0].conv1.conv.strides[0] for stage in backbone.stages]


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


@pytest.mark.parametrize(
    "block_depths, keras_params",
    [
        # tf_keras.applications.ResNet50 / ResNet101(include_top=False, weights=None).count_params().
        ((3, 4, 6, 3), 23_587_712),
        ((3, 4, 23, 3), 42_658_176),
    ],
)
def test_parameter_counts_equal_keras_applications(block_depths, keras_params):
    backbone = ResNet(block_depths=block_depths)
    backbone(tf.zeros([1, 32, 32, 3]), training=False)
    assert backbone.count_params() == keras_params
    assert [len(stage) for stage in backbone.stages] == list(block_depths)
    # 2 arrays per conv (kernel, bias) and 4 per BN, as in keras' layer list.
    convs = 1 + sum(block_depths) * 3 + 4
    assert len(backbone.weights) == convs * 6
    assert len(backbone.keras_application_layers()) == convs * 2


def test_keras_application_layers_name_every_weighted_layer():
    backbone = ResNet(**TINY)
    backbone(tf.zeros([1, 32, 32, 3]), training=False)
    layers = backbone.keras_application_layers()
    block = backbone.stages[1][0]
    assert layers["conv1_conv"] is backbone.stem_conv.conv and layers["conv1_bn"] is backbone.stem_conv.bn
    assert layers["conv3_block1_0_conv"] is block.shortcut.conv and layers["conv3_block1_1_conv"] is block.conv1.conv
    assert layers["conv5_block1_3_bn"] is backbone.stages[3][0].conv3.bn
    assert isinstance(layers["conv2_block1_2_bn"], keras.layers.BatchNormalization)
    assert sum(len(layer.weights) for layer in layers.values()) == len(backbone.weights)
    assert len({id(layer) for layer in layers.values()}) == len(layers)
    assert all(layer.epsilon == 1.001e-5 for name, layer in layers.items() if name.endswith("_bn"))
    assert all(layer.use_bias for name, layer in layers.items() if name.endswith("_conv"))

    beta = ResNet(**TINY, stem="beta")
    assert set(layers) - set(beta.keras_application_layers()) == {"conv1_conv", "conv1_bn"}


def test_stems():
    v1 = ResNet(**TINY)
    assert (v1.stem_conv.conv.kernel_size, v1.stem_conv.conv.strides, v1.stem_conv.conv.padding) == (
        (7, 7),
        (2, 2),
        "valid",
    )
    beta = ResNet(**TINY, stem="beta")
    features = beta(tf.random.normal([2, 64, 64, 3]), training=False)
    assert features["low_level"].shape == (2, 16, 16, 32) and features["high_level"].shape == (2, 4, 4, 256)
    assert [conv.filters for conv in beta.stem_convs] == [8, 8, 16]
    assert [conv.conv.kernel_size for conv in beta.stem_convs] == [(3, 3)] * 3
    assert [conv.strides for conv in beta.stem_convs] == [2, 1, 1]
    assert beta.stem_conv is beta.stem_convs[0]
    # Odd sizes keep the stride-4 / output_stride arithmetic of keras (ceil at every downsampling).
    assert beta(tf.zeros([1, 33, 47, 3]))["low_level"].shape == (1, 9, 12, 32)
    assert v1(tf.zeros([1, 33, 47, 3]))["low_level"].shape == (1, 9, 12, 32)


def test_bottleneck_projection_and_identity():
    projected = BottleneckBlock(4, strides=2, use_projection=True)
    assert projected(tf.random.normal([1, 8, 8, 3])).shape == (1, 4, 4, 16)
    assert projected.conv1.conv.strides == (2, 2) and projected.conv2.conv.strides == (1, 1)
    dilated = BottleneckBlock(4, dilation_rate=2, use_projection=True)
    assert dilated.conv2.conv.dilation_rate == (2, 2) and dilated.conv1.conv.dilation_rate == (1, 1)
    identity = BottleneckBlock(4)
    x = tf.random.normal([1, 8, 8, 16])
    y = identity(x)
    assert y.shape == x.shape and identity.shortcut is None
    assert float(tf.reduce_min(y)) >= 0.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"output_stride": 4}, r"expected `output_stride` in \(8, 16, 32\), received 4"),
        (
            {"block_depths": (1, 1, 1)},
            r"ResNet.block_depths: expected 4 entries \(one per stage\), received \(1, 1, 1\)",
        ),
        ({"block_depths": (1, 0, 1, 1)}, r"ResNet.block_depths\[1\]: expected a positive integer, received 0"),
        ({"base_filters": 0}, r"ResNet.base_filters: expected a positive integer, received 0"),
        ({"multi_grid": ()}, r"ResNet.multi_grid: expected a non-empty sequence"),
        ({"output_stride": 32, "multi_grid": (2, 4)}, r"expected multi_grid\[0\] == 1"),
        ({"stem": "v2"}, r"ResNet.stem: expected one of \{v1, beta\}, received 'v2'"),
    ],
)
def test_invalid_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ResNet(**{**TINY, **kwargs})


def test_config_round_trip_and_gin():
    backbone = ResNet(block_depths=(2, 1, 1, 3), base_filters=4, output_stride=8, multi_grid=(1, 2, 4), stem="beta")
    config = backbone.get_config()
    assert config["block_depths"] == (2, 1, 1, 3)
    assert (config["base_filters"], config["output_stride"], config["multi_grid"]) == (4, 8, (1, 2, 4))
    assert config["stem"] == "beta"
    # A JSON round trip turns tuples into lists; those must be accepted too.
    clone = ResNet.from_config({**config, "block_depths": [2, 1, 1, 3], "multi_grid": [1, 2, 4]})
    assert clone.get_config() == config

    gin.parse_config(
        "ResNet.block_depths = (1, 1, 1, 1)\nResNet.base_filters = 4\nResNet.output_stride = 8\nResNet.stem = 'beta'"
    )
    configured = ResNet()
    assert configured.stem == "beta"
    assert (configured.block_depths, configured.base_filters, configured.output_stride) == (
        (1, 1, 1, 1),
        4,
        8,
    )
