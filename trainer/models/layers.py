"""Building blocks shared by the backbone and the segmentation head: conv-BN-ReLU, resizing, argument checks."""

from collections.abc import Sequence
from typing import Any

import tensorflow as tf
import tf_keras as keras

from trainer.common import validate
from trainer.common.errors import UserInputError, expected
from trainer.models.atrous import AtrousConv2D
from trainer.models.batch_norm import DEFAULT_EPSILON, BatchNormOwner, batch_norm_layer
from trainer.models.serialization import SERIALIZATION_PACKAGE

VALID_PADDINGS = ("same", "valid")


def require_stride_or_dilation(owner: str, strides: Any, dilation_rate: Any) -> tuple[int, int]:
    """Returns (strides, dilation_rate) as positive ints, at most one of them above 1.

    Keras convolutions reject a stride and a dilation together, but only at build time and without saying which
    layer; checking here names it.
    """
    strides = validate.positive_int(f"{owner}.strides", strides)
    dilation_rate = validate.positive_int(f"{owner}.dilation_rate", dilation_rate)
    if strides > 1 and dilation_rate > 1:
        raise UserInputError(
            f"{owner}: expected strides == 1 or dilation_rate == 1 (a convolution cannot do both), "
            f"received strides={strides}, dilation_rate={dilation_rate}"
        )
    return strides, dilation_rate


def spatial_size(images: tf.Tensor) -> list[int | tf.Tensor]:
    """Returns [height, width] of NHWC `images`: Python ints where static, scalar tensors where not."""
    # Mixing static and dynamic dims keeps static shapes through tf.image.resize whenever they are known.
    static = images.shape[1:3]
    dynamic = tf.shape(images)[1:3]
    return [static[i] if static[i] is not None else dynamic[i] for i in range(2)]


def resize_bilinear(images: tf.Tensor, size: Sequence[int | tf.Tensor]) -> tf.Tensor:
    """Bilinearly resizes NHWC `images` to `size` = [height, width], keeping their dtype."""
    # Resized in float32 and cast back, so mixed precision stays in bf16/fp16 downstream; resizing bf16 directly
    # makes XLA's ResizeBilinearGrad mix f32 and bf16 and fail to compile.
    return tf.cast(tf.image.resize(tf.cast(images, tf.float32), size, method="bilinear"), images.dtype)


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class ConvBNReLU(BatchNormOwner, keras.layers.Layer):
    """Conv2D (he_normal; by default no bias and 'same' padding; atrous natively) → batch norm → optional ReLU.

    `use_bias`, `padding` and `bn_epsilon` (the BN's default epsilon) exist so that a backbone can mirror a
    reference architecture (e.g. keras' ResNet, whose convs carry a bias) and load its weights.
    """

    def __init__(
        self,
        filters: int,
        kernel_size: int,
        strides: int = 1,
        dilation_rate: int = 1,
        activation: bool = True,
        use_bias: bool = False,
        padding: str = "same",
        bn_epsilon: float = DEFAULT_EPSILON,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        owner = f"{type(self).__name__}({self.name!r})"
        self.filters = validate.positive_int(f"{owner}.filters", filters)
        self.kernel_size = validate.positive_int(f"{owner}.kernel_size", kernel_size)
        self.strides, self.dilation_rate = require_stride_or_dilation(owner, strides, dilation_rate)
        self.padding = validate.choice(f"{owner}.padding", padding, VALID_PADDINGS)
        self.bn_epsilon = validate.positive_number(f"{owner}.bn_epsilon", bn_epsilon)
        self.activation = bool(activation)
        # The following BN's beta makes a conv bias redundant; it is kept only to mirror reference weights.
        self.use_bias = bool(use_bias)
        self.conv = AtrousConv2D(
            filters,
            kernel_size,
            strides=strides,
            dilation_rate=dilation_rate,
            padding=padding,
            use_bias=self.use_bias,
            kernel_initializer="he_normal",
            name="conv",
        )
        self.bn = batch_norm_layer("bn", epsilon=bn_epsilon)

    def call(self, inputs: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        """Applies conv, BN and (optionally) ReLU."""
        x = self.bn(self.conv(inputs), training=training)
        return tf.nn.relu(x) if self.activation else x

    def get_config(self) -> dict[str, Any]:
        """Returns the constructor arguments."""
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "kernel_size": self.kernel_size,
                "strides": self.strides,
                "dilation_rate": self.dilation_rate,
                "activation": self.activation,
                "use_bias": self.use_bias,
                "padding": self.padding,
                "bn_epsilon": self.bn_epsilon,
            }
        )
        return config


def require_bool(where: str, value: Any) -> bool:
    """Returns `value` if it is True or False: bool("false") is True, so a string must not switch a layer on."""
    if not isinstance(value, bool):
        raise expected(where, "True or False", value)
    return value


def require_drop_rate(where: str, value: Any) -> float:
    """Returns `value` as a float if it is a number in [0, 1)."""
    rate = float(validate.non_negative_number(where, value))
    if rate >= 1:
        raise expected(where, "a number in [0, 1)", value)
    return rate
