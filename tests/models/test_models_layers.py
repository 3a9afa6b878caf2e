"""Tests for trainer/models/layers.py: ConvBNReLU and the resize helpers."""

import gin
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from trainer.models.batch_norm import BatchNorm, BatchNormConfig, configure_batch_norm
from trainer.models.layers import ConvBNReLU, resize_bilinear, spatial_size


@pytest.fixture(autouse=True)
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def test_conv_bn_relu_batch_norm_defaults_and_configured_values():
    default = ConvBNReLU(4, 1, name="bn").bn
    assert isinstance(default, BatchNorm) and isinstance(default, keras.layers.BatchNormalization)
    assert (default.synchronized, default.momentum, default.epsilon) == (False, 0.99, 1e-3)

    gin.parse_config("batch_norm.sync = True\nbatch_norm.momentum = 0.9997\nbatch_norm.epsilon = 1e-5")
    layer = ConvBNReLU(4, 1, bn_epsilon=1.001e-5)
    assert configure_batch_norm(layer, BatchNormConfig()) == 1
    assert (layer.bn.synchronized, layer.bn.momentum, layer.bn.epsilon) == (True, 0.9997, 1e-5)


def test_conv_bn_relu_shapes_and_activation():
    layer = ConvBNReLU(6, 3, strides=2, name="block")
    x = tf.random.normal([2, 16, 12, 4])
    y = layer(x, training=False)
    assert y.shape == (2, 8, 6, 6)
    assert float(tf.reduce_min(y)) >= 0.0
    assert layer.conv.use_bias is False
    assert layer.conv.padding == "same"

    linear = ConvBNReLU(6, 1, activation=False)
    assert float(tf.reduce_min(linear(x, training=False))) < 0.0


def test_conv_bn_relu_dilation_keeps_size():
    layer = ConvBNReLU(3, 3, dilation_rate=4)
    assert layer(tf.ones([1, 9, 9, 2])).shape == (1, 9, 9, 3)
    assert layer.conv.dilation_rate == (4, 4)


def test_conv_bn_relu_rejects_stride_with_dilation():
    with pytest.raises(ValueError, match=r"strides == 1 or dilation_rate == 1.*strides=2, dilation_rate=2"):
        ConvBNReLU(8, 3, strides=2, dilation_rate=2)


@pytest.mark.parametrize("bad", [0, -1, 2.0, True, "8"])
def test_conv_bn_relu_rejects_bad_filters(bad):
    with pytest.raises(
        ValueError, match=r"ConvBNReLU\('conv_bn_re_lu.*'\)\.filters: expected a positive integer, received"
    ):
        ConvBNReLU(bad, 3)


def test_conv_bn_relu_config_round_trip():
    layer = ConvBNReLU(5, 3, strides=1, dilation_rate=2, activation=False, name="x")
    config = layer.get_config()
    assert {k: config[k] for k in ("filters", "kernel_size", "strides", "dilation_rate", "activation")} == {
        "filters": 5,
        "kernel_size": 3,
        "strides": 1,
        "dilation_rate": 2,
        "activation": False,
    }
    clone = ConvBNReLU.from_config(config)
    assert clone.get_config() == config


def test_resize_bilinear_keeps_dtype_and_handles_dynamic_shapes():
    x = tf.cast(tf.reshape(tf.range(4.0), [1, 2, 2, 1]), tf.bfloat16)
    assert resize_bilinear(x, [4, 4]).dtype == tf.bfloat16

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 2]), tf.TensorSpec([None, None, None, 2])])
    def resize_like(images, like):
        return resize_bilinear(images, spatial_size(like))

    out = resize_like(tf.ones([1, 3, 5, 2]), tf.zeros([1, 7, 11, 2]))
    assert out.shape == (1, 7, 11, 2)
    np.testing.assert_allclose(out.numpy(), 1.0)
    # Static sizes stay static, so downstream layers see known shapes.
    assert spatial_size(tf.zeros([1, 7, 11, 2])) == [7, 11]
