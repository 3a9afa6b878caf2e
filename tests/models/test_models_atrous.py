"""Tests for trainer/models/atrous.py: native dilated convs equal keras' space-to-batch path, layer and model."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from trainer.core import losses
from trainer.models import DeepLabV3Plus, MobileNetV2, ResNet, Xception65, atrous
from trainer.models.atrous import AtrousConv2D, AtrousDepthwiseConv2D

RATES = (1, 2, 4, 6, 12, 18)
# Feature sizes below, at and above the rates: the centre-tap shortcut applies where rate >= both sizes.
SIZES = ((5, 7), (12, 12), (20, 9), (33, 33))
IGNORE_LABEL = 255


def relative_error(actual: tf.Tensor, reference: tf.Tensor) -> float:
    actual, reference = np.asarray(actual, np.float64), np.asarray(reference, np.float64)
    return float(np.max(np.abs(actual - reference)) / max(np.max(np.abs(reference)), 1e-12))


def output_and_gradients(layer: keras.layers.Layer, inputs: tf.Tensor) -> list[tf.Tensor]:
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        outputs = layer(inputs)
        loss = tf.reduce_sum(tf.sin(outputs) * outputs)
    return [outputs, *tape.gradient(loss, [inputs, *layer.trainable_variables])]


def twin_layers(native_class, keras_class, input_shape, **kwargs) -> tuple[keras.layers.Layer, keras.layers.Layer]:
    """A native layer and keras' own, both named 'conv', with the same weights."""
    native, reference = native_class(name="conv", **kwargs), keras_class(name="conv", **kwargs)
    native.build(input_shape)
    reference.build(input_shape)
    reference.set_weights(native.get_weights())
    return native, reference


@pytest.mark.parametrize("size", SIZES, ids=lambda size: f"{size[0]}x{size[1]}")
@pytest.mark.parametrize("rate", RATES)
def test_conv_equals_keras_forward_and_backward(rate, size):
    inputs = tf.random.stateless_normal([2, *size, 8], seed=[rate, size[0]])
    native, reference = twin_layers(
        AtrousConv2D, keras.layers.Conv2D, inputs.shape, filters=6, kernel_size=3, dilation_rate=rate, padding="same"
    )
    for actual, expected in zip(
        output_and_gradients(native, inputs), output_and_gradients(reference, inputs), strict=True
    ):
        assert relative_error(actual, expected) < 1e-5


@pytest.mark.parametrize("size", SIZES, ids=lambda size: f"{size[0]}x{size[1]}")
@pytest.mark.parametrize("rate", RATES)
def test_depthwise_equals_keras_forward_and_backward(rate, size):
    inputs = tf.random.stateless_normal([2, *size, 8], seed=[rate, size[1]])
    native, reference = twin_layers(
        AtrousDepthwiseConv2D,
        keras.layers.DepthwiseConv2D,
        inputs.shape,
        kernel_size=3,
        dilation_rate=rate,
        padding="same",
    )
    for actual, expected in zip(
        output_and_gradients(native, inputs), output_and_gradients(reference, inputs), strict=True
    ):
        assert relative_error(actual, expected) < 1e-5


def graph_op_types(layer: keras.layers.Layer, input_shape) -> set[str]:
    forward = tf.function(layer).get_concrete_function(tf.TensorSpec(input_shape))
    return {op.type for op in forward.graph.get_operations()}


def conv_ops(layer: keras.layers.Layer, input_shape) -> list[tuple[list, list]]:
    """(kernel shape, dilations) of every Conv2D op in `layer`'s graph for `input_shape`."""
    graph = tf.function(layer).get_concrete_function(tf.TensorSpec(input_shape)).graph
    ops = [op for op in graph.get_operations() if op.type == "Conv2D"]
    return [(op.inputs[1].shape.as_list(), op.get_attr("dilations")) for op in ops]


def test_dilated_conv_is_one_native_op_and_the_centre_tap_a_1x1():
    layer = AtrousConv2D(4, 3, dilation_rate=6, padding="same")
    inside = graph_op_types(layer, [1, 16, 16, 3])
    assert "Conv2D" in inside and not {"SpaceToBatchND", "BatchToSpaceND"} & inside
    assert conv_ops(layer, [1, 16, 16, 3]) == [([3, 3, 3, 4], [1, 6, 6, 1])]
    assert conv_ops(layer, [1, 6, 5, 3]) == [([1, 1, 3, 4], [1, 1, 1, 1])]


def test_dynamic_size_never_takes_the_shortcut():
    layer = AtrousConv2D(4, 3, dilation_rate=12, padding="same")
    assert conv_ops(layer, [1, None, None, 3]) == [([3, 3, 3, 4], [1, 12, 12, 1])]
    forward = tf.function(layer).get_concrete_function(tf.TensorSpec([1, None, None, 3]))
    small = tf.random.stateless_normal([1, 5, 5, 3], seed=[0, 1])
    reference = tf.nn.convolution(small, layer.kernel, padding="SAME", dilations=12)
    np.testing.assert_allclose(forward(small).numpy(), reference.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rate", (5, 6, 18))
def test_centre_tap_equals_the_full_conv(rate):
    inputs = tf.random.stateless_normal([2, 5, 4, 8], seed=[rate, 2])
    layer = AtrousConv2D(6, 3, dilation_rate=rate, padding="same", use_bias=True, bias_initializer="ones")
    outputs = layer(inputs)
    full = tf.nn.bias_add(tf.nn.conv2d(inputs, layer.kernel, 1, "SAME", dilations=rate), layer.bias)
    np.testing.assert_allclose(outputs.numpy(), full.numpy(), rtol=1e-6, atol=1e-6)


def test_fallback_without_cpu_support_is_keras_space_to_batch(monkeypatch):
    monkeypatch.setattr(atrous, "cpu_supports_dilated_conv2d", lambda: False)
    inside = graph_op_types(AtrousConv2D(4, 3, dilation_rate=2, padding="same"), [1, 16, 16, 3])
    assert "SpaceToBatchND" in inside


def test_oneDNN_cpu_supports_dilated_backprop():
    # The CI images and the demo run with oneDNN (TensorFlow's x86 default); without it the fallback applies.
    assert atrous.cpu_supports_dilated_conv2d()


@pytest.mark.parametrize("native_class", (AtrousConv2D, AtrousDepthwiseConv2D))
def test_config_round_trip_and_registration(native_class):
    layer = native_class(**({"filters": 4} if native_class is AtrousConv2D else {}), kernel_size=3, dilation_rate=4)
    config = keras.layers.serialize(layer)
    assert keras.saving.get_registered_name(native_class) == f"deeplab_trainer>{native_class.__name__}"
    restored = keras.layers.deserialize(config)
    assert type(restored) is native_class and restored.get_config() == layer.get_config()


def test_weight_names_match_keras():
    native, reference = twin_layers(AtrousConv2D, keras.layers.Conv2D, [1, 8, 8, 3], filters=4, kernel_size=3)
    assert [w.name for w in native.weights] == [w.name for w in reference.weights] == ["kernel:0", "bias:0"]


@pytest.mark.parametrize("policy", ("mixed_bfloat16", "mixed_float16"))
@pytest.mark.parametrize("size", (6, 16))
def test_mixed_precision_dtypes_as_keras(policy, size):
    keras.mixed_precision.set_global_policy(policy)
    try:
        inputs = tf.random.stateless_normal([1, size, size, 4], seed=[3, size])
        native, reference = twin_layers(
            AtrousConv2D, keras.layers.Conv2D, inputs.shape, filters=4, kernel_size=3, dilation_rate=6, padding="same"
        )
        actual, expected = native(inputs), reference(inputs)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert actual.dtype == expected.dtype and native.kernel.dtype == tf.float32
    np.testing.assert_allclose(
        actual.numpy().astype(np.float32), expected.numpy().astype(np.float32), rtol=0.05, atol=0.05
    )


def test_jit_compiled_equals_eager():
    layer = AtrousConv2D(4, 3, dilation_rate=3, padding="same")
    inputs = tf.random.stateless_normal([2, 11, 11, 5], seed=[4, 4])
    eager = output_and_gradients(layer, inputs)
    compiled = tf.function(lambda x: output_and_gradients(layer, x), jit_compile=True)(inputs)
    for actual, expected in zip(compiled, eager, strict=True):
        assert relative_error(actual, expected) < 1e-5


BACKBONES = {
    "resnet": lambda output_stride: ResNet(block_depths=(1, 1, 1, 1), base_filters=8, output_stride=output_stride),
    "xception65": lambda output_stride: Xception65(output_stride, width_multiplier=0.0625, middle_flow_blocks=1),
    "mobilenet_v2": lambda output_stride: MobileNetV2(output_stride, width_multiplier=0.35, include_final_conv=False),
}


def loss_and_gradients(model: keras.Model, images: tf.Tensor, labels: tf.Tensor) -> list[tf.Tensor]:
    """The replica step's cross-entropy (normalised by the batch's pixels) and its gradients."""
    with tf.GradientTape() as tape:
        loss_sum, pixels = losses.pixel_cross_entropy_sum(labels, model(images, training=True), IGNORE_LABEL)
        loss = loss_sum / pixels
    return [loss, *tape.gradient(loss, model.trainable_variables)]


@pytest.mark.parametrize("output_stride", (8, 16))
@pytest.mark.parametrize("family", sorted(BACKBONES))
def test_model_loss_and_gradients_equal_the_space_to_batch_path(family, output_stride, monkeypatch):
    # Rates 2 and 6 run natively at 64 px (4×4 or 8×8 features), 12 takes the centre-tap shortcut.
    model = DeepLabV3Plus(
        5,
        backbone=BACKBONES[family](output_stride),
        aspp_filters=16,
        aspp_rates=(2, 6, 12),
        aspp_dropout_rate=0.0,
        low_level_filters=8,
        decoder_filters=16,
        separable_convs=family == "xception65",
    )
    images = tf.random.stateless_uniform([2, 64, 64, 3], seed=[1, output_stride], minval=-1, maxval=1)
    labels = tf.random.stateless_uniform([2, 64, 64], seed=[2, output_stride], maxval=5, dtype=tf.int32)
    native = loss_and_gradients(model, images, labels)
    atrous_layers = [layer for layer in model.submodules if isinstance(layer, AtrousConv2D | AtrousDepthwiseConv2D)]
    assert any(tuple(layer.dilation_rate) != (1, 1) for layer in atrous_layers)
    monkeypatch.setattr(AtrousConv2D, "convolution_op", keras.layers.Conv2D.convolution_op)
    monkeypatch.setattr(AtrousDepthwiseConv2D, "call", keras.layers.DepthwiseConv2D.call)
    space_to_batch = loss_and_gradients(model, images, labels)
    assert relative_error(native[0], space_to_batch[0]) < 1e-5
    # Gradients that are zero in exact arithmetic (a conv bias or BN beta right before another BN) are pure
    # rounding noise, so each gradient is held to 1e-5 of the whole gradient's scale, and the whole to 1e-5.
    flat_native, flat_reference = (
        np.concatenate([np.ravel(g) for g in grads[1:]]) for grads in (native, space_to_batch)
    )
    assert flat_native.size == model.count_params() - sum(int(np.prod(v.shape)) for v in model.non_trainable_weights)
    scale = float(np.max(np.abs(flat_reference)))
    assert np.linalg.norm(flat_native - flat_reference) / np.linalg.norm(flat_reference) < 1e-5
    for actual, expected in zip(native[1:], space_to_batch[1:], strict=True):
        assert float(np.max(np.abs(np.asarray(actual) - np.asarray(expected)))) < 1e-5 * scale
