"""Tests for trainer/models/mobilenet_v3.py: keras-identical weights and outputs, atrous strides, dtypes, config."""

import math

import gin
import pytest
import tensorflow as tf
import tf_keras as keras

from tests.models import keras_parity
from trainer.common.errors import UserInputError
from trainer.models.mobilenet_v3 import MobileNetV3, MobileNetV3Block

THIN = 0.35
KERAS = {"small": keras.applications.MobileNetV3Small, "large": keras.applications.MobileNetV3Large}
# The keras layer that ends the last block at stride 4.
KERAS_LOW_LEVEL = {"small": "expanded_conv/project/BatchNorm", "large": "expanded_conv_2/Add"}


@pytest.fixture(autouse=True)
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def _keras_model(variant, alpha, minimalistic, size):
    return KERAS[variant](
        input_shape=(size, size, 3),
        alpha=alpha,
        minimalistic=minimalistic,
        include_top=False,
        weights=None,
        # Keras' Rescaling maps 0-255 pixels to exactly the pipeline's [-1, 1], which the backbone takes as is.
        include_preprocessing=False,
    )


def _built(backbone, size=64):
    backbone(tf.zeros([1, size, size, 3]), training=False)
    return backbone


@pytest.mark.parametrize(
    "variant, alpha, minimalistic, size",
    [
        ("small", THIN, False, 64),
        pytest.param("small", THIN, True, 65, marks=pytest.mark.slow),
        ("large", THIN, False, 65),
        pytest.param("large", THIN, True, 64, marks=pytest.mark.slow),
    ],
)
def test_keras_weights_map_one_to_one_and_outputs_match(variant, alpha, minimalistic, size):
    keras_model = _keras_model(variant, alpha, minimalistic, size)
    keras_parity.randomize(keras_model)
    backbone = _built(MobileNetV3(variant, output_stride=32, width_multiplier=alpha, minimalistic=minimalistic), size)
    keras_parity.assert_layer_for_layer(keras_model, backbone)
    assert backbone.count_params() == keras_model.count_params()
    keras_parity.copy_keras_weights(keras_model, backbone)
    images = tf.random.uniform([2, size, size, 3], -1.0, 1.0, seed=1)
    keras_parity.assert_outputs_match(keras_model, backbone, images, images, KERAS_LOW_LEVEL[variant])


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["small", "large"])
def test_full_models_have_keras_parameter_counts(variant):
    keras_model = KERAS[variant](input_shape=(224, 224, 3), include_top=False, weights=None)
    assert _built(MobileNetV3(variant)).count_params() == keras_model.count_params()


def _strides_and_rates(backbone):
    return [(block.depthwise.strides[0], block.depthwise.dilation_rate[0]) for block in backbone.blocks]


def test_atrous_strides_and_dilations_follow_output_stride():
    large = [1, 2, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1]
    assert _strides_and_rates(MobileNetV3("large", 32, THIN)) == [(s, 1) for s in large]
    # OS16: block 12 drops its stride at rate 1, the blocks after it dilate by 2.
    assert _strides_and_rates(MobileNetV3("large", 16, THIN)) == [(s, 1) for s in large[:12]] + [(1, 1), (1, 2), (1, 2)]
    # OS8: from block 6 on rate 2, then 4 after block 12.
    assert _strides_and_rates(MobileNetV3("large", 8, THIN)) == (
        [(s, 1) for s in large[:6]] + [(1, 1)] + [(1, 2)] * 6 + [(1, 4)] * 2
    )
    small = [2, 2, 1, 2, 1, 1, 1, 1, 2, 1, 1]
    assert _strides_and_rates(MobileNetV3("small", 16, THIN)) == [(s, 1) for s in small[:8]] + [(1, 1), (1, 2), (1, 2)]
    assert _strides_and_rates(MobileNetV3("small", 8, THIN)) == (
        [(s, 1) for s in small[:3]] + [(1, 1)] + [(1, 2)] * 4 + [(1, 2), (1, 4), (1, 4)]
    )
    residual = [block.residual for block in MobileNetV3("large", 32, THIN).blocks]
    assert [block.residual for block in MobileNetV3("large", 8, THIN).blocks] == residual


@pytest.mark.parametrize(
    "variant, output_stride, size", [("small", 8, 64), ("large", 16, 65), ("small", 16, 513), ("large", 8, 513)]
)
def test_feature_strides(variant, output_stride, size):
    backbone = MobileNetV3(variant, output_stride=output_stride, width_multiplier=THIN, minimalistic=True)
    features = backbone(tf.zeros([1, size, size, 3]), training=False)
    low, high = math.ceil(size / 4), math.ceil(size / output_stride)
    assert features["low_level"].shape[1:3] == (low, low)
    assert features["high_level"].shape[1:3] == (high, high)


def test_mixed_bfloat16():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        backbone = MobileNetV3("large", output_stride=16, width_multiplier=THIN)
        features = backbone(tf.random.uniform([1, 33, 33, 3]), training=True)
        assert features["low_level"].dtype == features["high_level"].dtype == tf.bfloat16
        assert all(weight.dtype == tf.float32 for weight in backbone.weights)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_invalid_arguments_and_config_round_trip():
    with pytest.raises(UserInputError, match=r"MobileNetV3.variant: expected one of"):
        MobileNetV3("medium")
    with pytest.raises(UserInputError, match=r"expected `output_stride` in \(8, 16, 32\), received 4"):
        MobileNetV3(output_stride=4)
    with pytest.raises(UserInputError, match=r"MobileNetV3.minimalistic: expected True or False"):
        MobileNetV3(minimalistic="yes")
    backbone = MobileNetV3("small", output_stride=8, width_multiplier=0.5, minimalistic=True, name="features")
    config = backbone.get_config()
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(backbone))
    assert clone.get_config() == config
    assert _strides_and_rates(clone) == _strides_and_rates(backbone)
    block = MobileNetV3Block(16, 16, expansion=2.5, kernel_size=5, dilation_rate=2, squeeze_excite=True, name="b")
    assert MobileNetV3Block.from_config(block.get_config()).get_config() == block.get_config()
    gin.parse_config("MobileNetV3.variant = 'small'\nMobileNetV3.output_stride = 32")
    assert (MobileNetV3().variant, MobileNetV3().output_stride) == ("small", 32)
