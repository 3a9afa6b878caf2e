"""Atrous (dilated) convolutions run as one native op instead of TensorFlow's space-to-batch lowering.

`tf.nn.convolution` (behind keras' Conv2D) lowers a dilation > 1 outside a TPU context to SpaceToBatchND →
Conv2D → BatchToSpaceND: the inner Conv2D runs on a tensor padded up to a multiple of the rate and both
reshuffles move every activation twice, forward and backward. The Conv2D op takes a `dilations` attribute
itself (oneDNN on CPU, cuDNN on GPU, XLA everywhere), so `AtrousConv2D` calls it directly. A 'same' k×k conv
whose rate reaches past the feature map (rate ≥ height and ≥ width) only ever reads zero padding outside its
centre tap, so it is computed as the 1×1 conv it then is; this needs static spatial sizes and is never taken
when they are dynamic.

Depthwise convs keep the space-to-batch path for rates inside the feature map: DepthwiseConv2dNative accepts
`dilations`, but its CPU gradient kernels ignore them and silently return wrong gradients (XLA's are right).
`AtrousDepthwiseConv2D` only adds the centre-tap shortcut.

Both are drop-in subclasses: same constructor, layer name and variables (`kernel`/`bias`,
`depthwise_kernel`/`bias`), so .h5 weights, checkpoints and SavedModels are interchangeable with keras' layers.
"""

import functools

import tensorflow as tf
import tf_keras as keras

from trainer.models.serialization import SERIALIZATION_PACKAGE


@functools.cache
def cpu_supports_dilated_conv2d() -> bool:
    """Whether this process' CPU Conv2D kernels take dilations forward and backward (true with oneDNN).

    TensorFlow's own (non-oneDNN) CPU kernels, e.g. under TF_ENABLE_ONEDNN_OPTS=0, reject dilations in
    Conv2DBackpropInput; the layers then keep keras' space-to-batch path.
    """
    with tf.init_scope(), tf.device("/CPU:0"):
        try:
            tf.raw_ops.Conv2DBackpropInput(
                input_sizes=[1, 3, 3, 1],
                filter=tf.ones([3, 3, 1, 1]),
                out_backprop=tf.ones([1, 3, 3, 1]),
                strides=[1, 1, 1, 1],
                padding="SAME",
                dilations=[1, 2, 2, 1],
            )
        except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError):
            return False
    return True


def reaches_past_feature_map(layer: keras.layers.Layer, input_shape: tf.TensorShape) -> bool:
    """Whether every tap of `layer`'s 'same', dilated, odd-sized kernel but the centre one reads only padding.

    Tap offsets from the centre are multiples of the rate; a rate ≥ the (static) size puts all of them outside
    the map for every output position. False for a dynamic size, 'valid' padding, an even kernel or strides.
    """
    height, width = input_shape[1:3]
    if height is None or width is None or layer.padding != "same" or layer.data_format != "channels_last":
        return False
    if any(size % 2 == 0 for size in layer.kernel_size) or tuple(layer.strides) != (1, 1):
        return False
    rate_h, rate_w = layer.dilation_rate
    return (rate_h > 1 or rate_w > 1) and rate_h >= height and rate_w >= width


def centre_tap(kernel: tf.Tensor) -> tf.Tensor:
    """The 1×1 centre of a [k_h, k_w, in, out] kernel (gradients flow back into that tap only)."""
    kernel = tf.convert_to_tensor(kernel)
    centre_h, centre_w = kernel.shape[0] // 2, kernel.shape[1] // 2
    return kernel[centre_h : centre_h + 1, centre_w : centre_w + 1]


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class AtrousConv2D(keras.layers.Conv2D):
    """keras.layers.Conv2D whose dilated convolution is the native Conv2D op with `dilations` (see the module)."""

    def convolution_op(self, inputs: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
        """Convolves `inputs` with `kernel` (already in the compute dtype under mixed precision)."""
        dilated = tuple(self.dilation_rate) != (1, 1)
        if not dilated or self.groups != 1 or self.data_format != "channels_last":
            return super().convolution_op(inputs, kernel)
        if reaches_past_feature_map(self, inputs.shape):
            return tf.nn.conv2d(inputs, centre_tap(kernel), strides=1, padding="SAME", name="AtrousCentreTap")
        if not cpu_supports_dilated_conv2d():
            return super().convolution_op(inputs, kernel)
        return tf.nn.conv2d(
            inputs,
            kernel,
            strides=list(self.strides),
            padding=self.padding.upper(),
            dilations=list(self.dilation_rate),
            name=type(self).__name__,
        )


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class AtrousDepthwiseConv2D(keras.layers.DepthwiseConv2D):
    """keras.layers.DepthwiseConv2D that runs a rate reaching past the feature map as its 1×1 centre tap."""

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        """Keras' depthwise conv, or the centre tap alone when the other taps read only padding."""
        if not reaches_past_feature_map(self, inputs.shape):
            return super().call(inputs)
        kernel = centre_tap(self.depthwise_kernel)
        outputs = tf.nn.depthwise_conv2d(inputs, kernel, strides=[1, 1, 1, 1], padding="SAME")
        if self.use_bias:
            outputs = tf.nn.bias_add(outputs, self.bias)
        return self.activation(outputs) if self.activation is not None else outputs
