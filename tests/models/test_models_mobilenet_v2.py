"""Tests for trainer/models/mobilenet_v2.py: keras-identical weights and outputs, atrous strides, dtypes, config."""

import math

import gin
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from trainer.common.errors import UserInputError
from trainer.models.mobilenet_v2 import InvertedResidualBlock, MobileNetV2

THIN = 0.35


@pytest.fixture(autouse=True)
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def _built(backbone: MobileNetV2, size: int = 64) -> MobileNetV2:
    backbone(tf.zeros([1, size, size, 3]), training=False)
    return backbone


def _keras_mobilenet_v2(alpha: float, size: int) -> keras.Model:
    return keras.applications.MobileNetV2(include_top=False, weights=None, alpha=alpha, input_shape=(size, size, 3))


def _randomize_keras_weights(keras_model: keras.Model) -> None:
    """He-normal kernels and non-trivial BN statistics, so every layer visibly shapes the output.

    With keras' default init (glorot on depthwise kernels, identity BN) activations shrink block after block and a
    missing residual or a wrong padding in an early block changes the output by less than 1e-6.
    """
    rng = np.random.default_rng(0)
    for layer in keras_model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, variance = layer.get_weights()
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, gamma.shape),
                    rng.normal(0.0, 0.1, beta.shape),
                    rng.normal(0.0, 0.1, mean.shape),
                    rng.uniform(0.5, 1.5, variance.shape),
                ]
            )
        elif isinstance(layer, keras.layers.DepthwiseConv2D):
            (kernel,) = layer.get_weights()
            fan_in = kernel.shape[0] * kernel.shape[1]  # each output channel sees one input channel's window
            layer.set_weights([rng.normal(0.0, np.sqrt(2.0 / fan_in), kernel.shape)])
        elif isinstance(layer, keras.layers.Conv2D):
            (kernel,) = layer.get_weights()
            fan_in = kernel.shape[0] * kernel.shape[1] * kernel.shape[2]
            layer.set_weights([rng.normal(0.0, np.sqrt(2.0 / fan_in), kernel.shape)])


def _copy_keras_weights(keras_model: keras.Model, backbone: MobileNetV2) -> None:
    for name, layer in backbone.keras_application_layers().items():
        weights = keras_model.get_layer(name).get_weights()
        assert [w.shape for w in weights] == [tuple(w.shape) for w in layer.weights], name
        layer.set_weights(weights)


@pytest.mark.parametrize("alpha, size", [(1.0, 96), (0.5, 96), (THIN, 96), (THIN, 97)])
def test_keras_weights_map_one_to_one_and_outputs_match(alpha, size):
    keras_model = _keras_mobilenet_v2(alpha, size)
    _randomize_keras_weights(keras_model)
    backbone = _built(MobileNetV2(output_stride=32, width_multiplier=alpha), size)
    mapping = backbone.keras_application_layers()

    keras_weighted = {layer.name for layer in keras_model.layers if layer.weights}
    assert set(mapping) == keras_weighted
    ours_weighted = {
        id(layer)
        for layer in backbone.submodules
        # Blocks only hold their sublayers' weights; the sublayers are what the map must cover.
        if isinstance(layer, keras.layers.Layer) and layer.weights and not isinstance(layer, InvertedResidualBlock)
    }
    assert {id(layer) for layer in mapping.values()} == ours_weighted
    assert backbone.count_params() == keras_model.count_params()

    _copy_keras_weights(keras_model, backbone)
    images = tf.random.uniform([2, size, size, 3], -1.0, 1.0, seed=1)
    expected = keras_model(images, training=False)
    features = backbone(images, training=False)
    assert features["high_level"].shape == expected.shape
    assert float(tf.math.reduce_std(expected)) > 0.5  # the comparison below is not between near-zero tensors
    np.testing.assert_allclose(features["high_level"].numpy(), expected.numpy(), atol=1e-4)
    low_level = keras.Model(keras_model.input, keras_model.get_layer("block_2_add").output)(images)
    np.testing.assert_allclose(features["low_level"].numpy(), low_level.numpy(), atol=1e-4)


def test_parameter_counts():
    assert _built(MobileNetV2(width_multiplier=1.0)).count_params() == 2_257_984
    # Without the 1×1 conv to 1280 channels and its BN: 320 * 1280 + 4 * 1280 fewer.
    assert _built(MobileNetV2(include_final_conv=False)).count_params() == 1_843_264
    thin = _built(MobileNetV2(width_multiplier=0.5, include_final_conv=False))
    assert thin.count_params() == 706_224 - (160 * 1280 + 4 * 1280)
    # Dilation changes neither shapes nor counts of weights.
    assert [_built(MobileNetV2(output_stride=os, width_multiplier=THIN)).count_params() for os in (8, 16, 32)] == [
        410_208
    ] * 3


@pytest.mark.parametrize("output_stride", [8, 16, 32])
@pytest.mark.parametrize("size", [64, 65, 97])
def test_feature_strides_and_channels(output_stride, size):
    backbone = MobileNetV2(output_stride=output_stride, width_multiplier=THIN, include_final_conv=False)
    features = backbone(tf.random.normal([1, size, size, 3]), training=False)
    assert set(features) == {"low_level", "high_level"}
    low = math.ceil(size / 4)
    high = math.ceil(size / output_stride)
    assert features["low_level"].shape == (1, low, low, 8)  # 24 × 0.35 → 8
    assert features["high_level"].shape == (1, high, high, 112)  # 320 × 0.35 → 112
    assert backbone.output_stride == output_stride


def test_final_conv_channels():
    features = MobileNetV2(width_multiplier=THIN)(tf.zeros([1, 32, 32, 3]), training=False)
    assert features["high_level"].shape == (1, 2, 2, 1280)
    assert float(tf.reduce_min(features["high_level"])) >= 0.0


def _strides_and_dilations(backbone):
    return [(block.depthwise.strides[0], block.depthwise.dilation_rate[0]) for block in backbone.blocks]


def test_atrous_strides_and_dilations_follow_output_stride():
    keras_strides = [1, 2, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1]
    os32 = MobileNetV2(output_stride=32, width_multiplier=THIN)
    assert _strides_and_dilations(os32) == [(stride, 1) for stride in keras_strides]

    # OS16: block 13 (first 160-channel block) drops its stride and keeps rate 1, later blocks dilate by 2.
    os16 = MobileNetV2(output_stride=16, width_multiplier=THIN)
    assert _strides_and_dilations(os16) == [(stride, 1) for stride in keras_strides[:13]] + [(1, 1)] + [(1, 2)] * 3

    # OS8: from block 6 (first 64-channel block) on: rate 2, then 4 after block 13's dropped stride.
    os8 = MobileNetV2(output_stride=8, width_multiplier=THIN)
    assert _strides_and_dilations(os8) == (
        [(stride, 1) for stride in keras_strides[:6]] + [(1, 1)] + [(1, 2)] * 7 + [(1, 4)] * 3
    )
    # The residual adds are keras' whatever the output stride.
    for backbone in (os16, os8):
        assert [block.residual for block in backbone.blocks] == [block.residual for block in os32.blocks]


def test_mixed_bfloat16():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        backbone = MobileNetV2(output_stride=16, width_multiplier=THIN)
        features = backbone(tf.random.uniform([1, 33, 33, 3]), training=True)
        assert features["low_level"].dtype == tf.bfloat16
        assert features["high_level"].dtype == tf.bfloat16
        assert all(weight.dtype == tf.float32 for weight in backbone.weights)
        assert bool(tf.reduce_all(tf.math.is_finite(tf.cast(features["high_level"], tf.float32))))
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.slow
def test_xla_forward_and_gradient():
    backbone = _built(MobileNetV2(output_stride=8, width_multiplier=THIN, include_final_conv=False), 33)
    images = tf.random.uniform([2, 33, 33, 3], seed=2)

    @tf.function(jit_compile=True)
    def forward_and_gradient(images):
        with tf.GradientTape() as tape:
            features = backbone(images, training=True)
            loss = tf.reduce_mean(tf.square(features["high_level"])) + tf.reduce_mean(features["low_level"])
        return features, tape.gradient(loss, backbone.trainable_variables)

    features, gradients = forward_and_gradient(images)
    assert features["high_level"].shape == (2, 5, 5, 112)
    assert len(gradients) == len(backbone.trainable_variables)
    assert all(g is not None and bool(tf.reduce_all(tf.math.is_finite(g))) for g in gradients)
    assert float(tf.linalg.global_norm(gradients)) > 0.0
    eager = backbone(images, training=False)["high_level"]
    compiled = tf.function(lambda x: backbone(x, training=False)["high_level"], jit_compile=True)(images)
    np.testing.assert_allclose(compiled.numpy(), eager.numpy(), atol=1e-4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"output_stride": 4}, r"expected `output_stride` in \(8, 16, 32\), received 4"),
        ({"width_multiplier": 0.0}, r"MobileNetV2.width_multiplier: expected a positive number, received 0.0"),
        ({"width_multiplier": "1.0"}, r"MobileNetV2.width_multiplier: expected a positive number, received '1.0'"),
        ({"include_final_conv": "false"}, r"MobileNetV2.include_final_conv: expected True or False, received 'false'"),
    ],
)
def test_invalid_arguments_raise_config_errors(kwargs, message):
    with pytest.raises(UserInputError, match=message):
        MobileNetV2(**kwargs)


def test_invalid_block_arguments_raise_config_errors():
    with pytest.raises(UserInputError, match=r"expected strides == 1 or dilation_rate == 1"):
        InvertedResidualBlock(8, 8, strides=2, dilation_rate=2)
    with pytest.raises(UserInputError, match=r"expected strides == 1 and input_filters == output_filters"):
        InvertedResidualBlock(8, 16, residual=True)


def test_config_round_trip_and_gin():
    backbone = MobileNetV2(output_stride=8, width_multiplier=0.5, include_final_conv=False, name="features")
    config = backbone.get_config()
    assert (config["output_stride"], config["width_multiplier"], config["include_final_conv"]) == (8, 0.5, False)
    clone = MobileNetV2.from_config(config)
    assert clone.get_config() == config
    assert _strides_and_dilations(clone) == _strides_and_dilations(backbone)
    assert keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(backbone)).get_config() == config

    block = InvertedResidualBlock(16, 16, expansion=6, dilation_rate=2, residual=True, name="block_5")
    assert InvertedResidualBlock.from_config(block.get_config()).get_config() == block.get_config()

    gin.parse_config("MobileNetV2.output_stride = 32\nMobileNetV2.width_multiplier = 0.35")
    configured = MobileNetV2()
    assert (configured.output_stride, configured.width_multiplier, configured.include_final_conv) == (32, 0.35, True)
