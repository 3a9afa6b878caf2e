"""Tests for trainer/models/keras_xception.py: keras-identical weights and outputs, atrous strides, config."""

import math

import gin
import pytest
import tensorflow as tf
import tf_keras as keras

from tests.models import keras_parity
from trainer.common.errors import UserInputError
from trainer.models.keras_xception import KerasXception, KerasXceptionBlock

THIN = {"width_multiplier": 0.0625, "middle_flow_blocks": 1}


@pytest.fixture(autouse=True)
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


@pytest.mark.slow
def test_keras_weights_map_one_to_one_and_outputs_match():
    # Keras has no thin Xception: the full model, once (at its 71-pixel minimum and one odd size above).
    size = 79
    keras_model = keras.applications.Xception(input_shape=(size, size, 3), include_top=False, weights=None)
    keras_parity.randomize(keras_model)
    backbone = KerasXception(output_stride=32)
    backbone(tf.zeros([1, size, size, 3]))
    keras_parity.assert_layer_for_layer(keras_model, backbone)
    assert backbone.count_params() == keras_model.count_params() == 20_861_480
    keras_parity.copy_keras_weights(keras_model, backbone)
    images = tf.random.uniform([2, size, size, 3], -1.0, 1.0, seed=1)
    keras_parity.assert_outputs_match(keras_model, backbone, images, images, "block3_sepconv2_bn")


def _strides_and_rates(backbone):
    return [(block.pool_strides, block.dilation_rate) for block in backbone.blocks]


def test_atrous_strides_and_dilations_follow_output_stride():
    # Blocks 2, 3, 4, 5 (the one middle block), 13, 14.
    assert _strides_and_rates(KerasXception(32, **THIN)) == [(2, 1), (2, 1), (2, 1), (None, 1), (2, 1), (None, 1)]
    assert _strides_and_rates(KerasXception(16, **THIN)) == [(2, 1), (2, 1), (2, 1), (None, 1), (1, 1), (None, 2)]
    assert _strides_and_rates(KerasXception(8, **THIN)) == [(2, 1), (2, 1), (1, 1), (None, 2), (1, 2), (None, 4)]
    shortcut_strides = [
        block.shortcut_conv.strides[0] for block in KerasXception(8, **THIN).blocks if block.shortcut_conv
    ]
    assert shortcut_strides == [2, 2, 1, 1]


@pytest.mark.parametrize("output_stride, size", [(8, 64), (16, 65), (16, 513), (8, 513)])
def test_feature_strides(output_stride, size):
    features = KerasXception(output_stride=output_stride, **THIN)(tf.zeros([1, size, size, 3]))
    stem = (size - 3) // 2 - 1  # keras' two 'valid' 3×3 convs, the first strided
    low = math.ceil(stem / 2)
    assert features["low_level"].shape[1:3] == (low, low)
    high = math.ceil(stem / (output_stride // 2))
    assert features["high_level"].shape[1:3] == (high, high)
    assert features["low_level"].shape[-1] == 16 and features["high_level"].shape[-1] == 128


def test_mixed_bfloat16():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        backbone = KerasXception(output_stride=16, **THIN)
        features = backbone(tf.random.uniform([1, 33, 33, 3]), training=True)
        assert features["low_level"].dtype == features["high_level"].dtype == tf.bfloat16
        assert all(weight.dtype == tf.float32 for weight in backbone.weights)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_invalid_arguments_and_config_round_trip():
    with pytest.raises(UserInputError, match=r"expected `output_stride` in \(8, 16, 32\), received 4"):
        KerasXception(output_stride=4)
    with pytest.raises(UserInputError, match=r"KerasXception.middle_flow_blocks: expected a positive int"):
        KerasXception(middle_flow_blocks=0)
    backbone = KerasXception(output_stride=8, name="features", **THIN)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(backbone))
    assert clone.get_config() == backbone.get_config()
    assert _strides_and_rates(clone) == _strides_and_rates(backbone)
    block = KerasXceptionBlock((8, 16), shortcut="conv", pool_strides=2, name="block3")
    assert KerasXceptionBlock.from_config(block.get_config()).get_config() == block.get_config()
    gin.parse_config("KerasXception.output_stride = 8")
    assert KerasXception().output_stride == 8
