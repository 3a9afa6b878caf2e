"""Tests for trainer/models/efficientnet_v2.py: keras-identical weights and outputs, preprocessing, atrous strides."""

import math

import gin
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from tf_keras.src.applications import efficientnet_v2 as keras_efficientnet_v2

from tests.models import keras_parity
from trainer.common.errors import UserInputError
from trainer.models.efficientnet_v2 import VARIANTS, EfficientNetV2, EfficientNetV2Block

THIN = {"width_coefficient": 0.25, "depth_coefficient": 0.5}
KERAS_FULL = {"b0": keras.applications.EfficientNetV2B0, "s": keras.applications.EfficientNetV2S}


@pytest.fixture(autouse=True)
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def _keras_thin(variant, size, include_preprocessing=False):
    # Keras' generic builder, which the named models call with their coefficients.
    return keras_efficientnet_v2.EfficientNetV2(
        THIN["width_coefficient"],
        THIN["depth_coefficient"],
        224,
        model_name=f"efficientnetv2-{variant}",
        include_top=False,
        weights=None,
        input_shape=(size, size, 3),
        include_preprocessing=include_preprocessing,
    )


def _built(backbone, size=64):
    backbone(tf.zeros([1, size, size, 3]), training=False)
    return backbone


@pytest.mark.parametrize(
    "variant, size", [("b0", 64), ("b2", 65), ("s", 64), pytest.param("m", 65, marks=pytest.mark.slow)]
)
def test_keras_weights_map_one_to_one_and_outputs_match(variant, size):
    keras_model = _keras_thin(variant, size)
    keras_parity.randomize(keras_model)
    backbone = _built(EfficientNetV2(variant, output_stride=32, **THIN), size)
    keras_parity.assert_layer_for_layer(keras_model, backbone)
    assert backbone.count_params() == keras_model.count_params()
    keras_parity.copy_keras_weights(keras_model, backbone)
    images = tf.random.uniform([2, size, size, 3], -1.0, 1.0, seed=1)
    block = backbone.blocks[backbone.low_level_block]
    low_level = f"{block.name}_{'add' if block.residual else 'project_bn'}"
    keras_parity.assert_outputs_match(keras_model, backbone, backbone.preprocess(images), images, low_level)


@pytest.mark.parametrize("variant", ["b1", "s"])
def test_preprocessing_is_keras_include_preprocessing(variant):
    keras_model = _keras_thin(variant, 32, include_preprocessing=True)
    stem = keras.Model(keras_model.input, keras_model.get_layer("stem_conv").input)
    images = tf.random.uniform([2, 32, 32, 3], -1.0, 1.0, seed=3)
    expected = stem((images + 1.0) * 127.5)
    np.testing.assert_allclose(EfficientNetV2(variant, **THIN).preprocess(images).numpy(), expected.numpy(), atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("variant", sorted(KERAS_FULL))
def test_full_models_have_keras_parameter_counts(variant):
    keras_model = KERAS_FULL[variant](input_shape=(64, 64, 3), include_top=False, weights=None)
    assert _built(EfficientNetV2(variant)).count_params() == keras_model.count_params()


def _strides_and_rates(backbone):
    spatial = [block.dwconv2 or block.expand_conv or block.project_conv for block in backbone.blocks]
    return [(conv.strides[0], conv.dilation_rate[0]) for conv in spatial]


def test_atrous_strides_and_dilations_follow_output_stride():
    # Thin B0: stage repeats 1, 1, 1, 2, 3, 4; stages 2, 3, 4 and 6 stride.
    strides = [1, 2, 2, 2, 1, 1, 1, 1, 2, 1, 1, 1]
    assert _strides_and_rates(EfficientNetV2("b0", 32, **THIN)) == [(s, 1) for s in strides]
    assert (
        _strides_and_rates(EfficientNetV2("b0", 16, **THIN)) == [(s, 1) for s in strides[:8]] + [(1, 1)] + [(1, 2)] * 3
    )
    assert (
        _strides_and_rates(EfficientNetV2("b0", 8, **THIN))
        == [(s, 1) for s in strides[:3]] + [(1, 1)] + [(1, 2)] * 4 + [(1, 2)] + [(1, 4)] * 3
    )
    residual = [block.residual for block in EfficientNetV2("b0", 32, **THIN).blocks]
    assert [block.residual for block in EfficientNetV2("b0", 8, **THIN).blocks] == residual


@pytest.mark.parametrize("variant, output_stride, size", [("b0", 8, 64), ("s", 16, 65), ("b0", 16, 513), ("s", 8, 513)])
def test_feature_strides(variant, output_stride, size):
    features = EfficientNetV2(variant, output_stride=output_stride, **THIN)(tf.zeros([1, size, size, 3]))
    low, high = math.ceil(size / 4), math.ceil(size / output_stride)
    assert features["low_level"].shape[1:3] == (low, low)
    assert features["high_level"].shape[1:3] == (high, high)


def test_stochastic_depth_drops_whole_examples_in_training_only():
    backbone = _built(EfficientNetV2("b0", 32, drop_connect_rate=0.9, **THIN))
    images = tf.random.uniform([4, 64, 64, 3], -1.0, 1.0, seed=4)
    inference = backbone(images, training=False)["high_level"]
    np.testing.assert_allclose(backbone(images, training=False)["high_level"].numpy(), inference.numpy())
    assert not np.allclose(backbone(images, training=True)["high_level"].numpy(), inference.numpy())
    assert [block.drop_rate for block in backbone.blocks][:2] == [0.0, 0.9 / 12]


def test_mixed_bfloat16():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        backbone = EfficientNetV2("s", output_stride=16, **THIN)
        features = backbone(tf.random.uniform([1, 33, 33, 3]), training=True)
        assert features["low_level"].dtype == features["high_level"].dtype == tf.bfloat16
        assert all(weight.dtype != tf.bfloat16 for weight in backbone.weights)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_invalid_arguments_and_config_round_trip():
    assert set(VARIANTS) == {"b0", "b1", "b2", "b3", "s", "m"}
    with pytest.raises(UserInputError, match=r"EfficientNetV2.variant: expected one of"):
        EfficientNetV2("l")
    with pytest.raises(UserInputError, match=r"EfficientNetV2.drop_connect_rate: expected a number in \[0, 1\)"):
        EfficientNetV2(drop_connect_rate=1.0)
    with pytest.raises(UserInputError, match=r"EfficientNetV2.preprocessing: expected True or False"):
        EfficientNetV2(preprocessing="no")
    backbone = EfficientNetV2("b1", output_stride=8, preprocessing=False, name="features", **THIN)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(backbone))
    assert clone.get_config() == backbone.get_config()
    assert _strides_and_rates(clone) == _strides_and_rates(backbone)
    block = EfficientNetV2Block(16, 16, expand_ratio=4, se_ratio=0.25, residual=True, drop_rate=0.1, name="block5b")
    assert EfficientNetV2Block.from_config(block.get_config()).get_config() == block.get_config()
    gin.parse_config("EfficientNetV2.variant = 'b3'")
    assert EfficientNetV2().width_coefficient == 1.2
