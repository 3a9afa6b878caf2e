"""Tests for trainer/models/convnext.py: keras-identical weights and outputs, preprocessing, atrous strides."""

import gin
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from tf_keras.src.applications import convnext as keras_convnext

from tests.models import keras_parity
from trainer.common.errors import UserInputError
from trainer.models.convnext import VARIANTS, ConvNeXt, ConvNeXtBlock

THIN = {"depths": (1, 1, 2, 1), "projection_dims": (8, 16, 24, 32)}


@pytest.fixture(autouse=True)
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def _keras_thin(size, include_preprocessing=False):
    return keras_convnext.ConvNeXt(
        THIN["depths"],
        THIN["projection_dims"],
        model_name="convnext_tiny",
        include_top=False,
        weights=None,
        input_shape=(size, size, 3),
        include_preprocessing=include_preprocessing,
    )


def _built(backbone, size=64):
    backbone(tf.zeros([1, size, size, 3]), training=False)
    return backbone


@pytest.mark.parametrize("size", [64, 67])
def test_keras_weights_map_one_to_one_and_outputs_match(size):
    keras_model = _keras_thin(size)
    keras_parity.randomize(keras_model)
    backbone = _built(ConvNeXt("tiny", output_stride=32, **THIN), size)
    keras_parity.assert_layer_for_layer(keras_model, backbone)
    assert backbone.count_params() == keras_model.count_params()
    keras_parity.copy_keras_weights(keras_model, backbone)
    images = tf.random.uniform([2, size, size, 3], -1.0, 1.0, seed=1)
    # The input of its call inside the keras model (`.input` is the Sequential's own): after stage 0.
    low_level = keras_model.get_layer("convnext_tiny_downsampling_block_0").get_input_at(0)
    keras_parity.assert_outputs_match(keras_model, backbone, backbone.preprocess(images), images, low_level)


def test_preprocessing_is_keras_prestem():
    keras_model = _keras_thin(32, include_preprocessing=True)
    prestem = keras.Model(keras_model.input, keras_model.get_layer("convnext_tiny_prestem_normalization").output)
    images = tf.random.uniform([2, 32, 32, 3], -1.0, 1.0, seed=3)
    expected = prestem((images + 1.0) * 127.5)
    np.testing.assert_allclose(ConvNeXt(**THIN).preprocess(images).numpy(), expected.numpy(), atol=1e-5)


@pytest.mark.slow
def test_full_model_has_keras_parameter_count():
    keras_model = keras.applications.ConvNeXtTiny(input_shape=(64, 64, 3), include_top=False, weights=None)
    assert _built(ConvNeXt("tiny")).count_params() == keras_model.count_params()


def _strides_and_rates(backbone):
    downsampling = [(seq.layers[0] if i == 0 else seq.layers[1]) for i, seq in enumerate(backbone.downsampling)]
    blocks = [blocks[0].depthwise_conv for blocks in backbone.stages]
    return [(conv.strides[0], conv.dilation_rate[0]) for conv in downsampling], [c.dilation_rate[0] for c in blocks]


def test_atrous_strides_and_dilations_follow_output_stride():
    assert _strides_and_rates(ConvNeXt(output_stride=32, **THIN)) == ([(4, 1), (2, 1), (2, 1), (2, 1)], [1, 1, 1, 1])
    assert _strides_and_rates(ConvNeXt(output_stride=16, **THIN)) == ([(4, 1), (2, 1), (2, 1), (1, 1)], [1, 1, 1, 2])
    assert _strides_and_rates(ConvNeXt(output_stride=8, **THIN)) == ([(4, 1), (2, 1), (1, 1), (1, 2)], [1, 1, 2, 4])


@pytest.mark.parametrize("output_stride, size", [(8, 64), (16, 65), (16, 513), (8, 513)])
def test_feature_strides(output_stride, size):
    features = ConvNeXt(output_stride=output_stride, **THIN)(tf.zeros([1, size, size, 3]))
    # Keras' 'valid' 4×4 / 4 and 2×2 / 2 convs floor the size.
    assert features["low_level"].shape[1:3] == (size // 4, size // 4)
    assert features["high_level"].shape[1:3] == (size // output_stride, size // output_stride)


def test_mixed_bfloat16():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        backbone = ConvNeXt(output_stride=16, **THIN)
        features = backbone(tf.random.uniform([1, 33, 33, 3]), training=True)
        assert features["low_level"].dtype == features["high_level"].dtype == tf.bfloat16
        assert all(weight.dtype == tf.float32 for weight in backbone.weights)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_invalid_arguments_and_config_round_trip():
    assert set(VARIANTS) == {"tiny", "small", "base"}
    with pytest.raises(UserInputError, match=r"ConvNeXt.variant: expected one of"):
        ConvNeXt("huge")
    with pytest.raises(UserInputError, match=r"ConvNeXt.depths: expected 4 entries"):
        ConvNeXt(depths=(1, 1, 1))
    with pytest.raises(UserInputError, match=r"ConvNeXt.drop_path_rate: expected a number in \[0, 1\)"):
        ConvNeXt(drop_path_rate=1.5)
    backbone = ConvNeXt("small", output_stride=8, drop_path_rate=0.1, name="features", **THIN)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(backbone))
    assert clone.get_config() == backbone.get_config()
    assert _strides_and_rates(clone) == _strides_and_rates(backbone)
    assert [blocks[-1].drop_path_rate for blocks in backbone.stages][-1] == pytest.approx(0.1)
    block = ConvNeXtBlock(16, dilation_rate=2, drop_path_rate=0.1, name="b")
    assert ConvNeXtBlock.from_config(block.get_config()).get_config() == block.get_config()
    gin.parse_config("ConvNeXt.variant = 'base'")
    assert ConvNeXt().projection_dims == (128, 256, 512, 1024)
