"""Building blocks shared by the backbone and the segmentation head: normalisation, conv-BN-ReLU, resizing."""

from collections.abc import Sequence
from typing import Any

import gin
import tensorflow as tf
import tf_keras as keras

from trainer.common.errors import UserInputError

SERIALIZATION_PACKAGE = "deeplab_trainer"
VALID_PADDINGS = ("same", "valid")


def require_positive_int(owner: str, arg: str, value: Any) -> int:
    """Returns `value` if it is a positive int, else raises a ValueError naming `owner` and `arg`."""
    # bool is an int subclass; `True` as a filter count is always a config mistake.
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserInputError(
            f"{owner}: expected `{arg}` to be a positive int, received {value!r} (of type {type(value).__name__})"
        )
    return value


def require_stride_or_dilation(owner: str, strides: Any, dilation_rate: Any) -> tuple[int, int]:
    """Returns (strides, dilation_rate) as positive ints, at most one of them above 1.

    Keras convolutions reject a stride and a dilation together, but only at build time and without saying which
    layer; checking here names it.
    """
    strides = require_positive_int(owner, "strides", strides)
    dilation_rate = require_positive_int(owner, "dilation_rate", dilation_rate)
    if strides > 1 and dilation_rate > 1:
        raise UserInputError(
            f"{owner}: expected strides == 1 or dilation_rate == 1 (a convolution cannot do both), "
            f"received strides={strides}, dilation_rate={dilation_rate}"
        )
    return strides, dilation_rate


def require_positive_ints(owner: str, arg: str, values: Any) -> tuple[int, ...]:
    """Returns `values` as a tuple if it is a non-empty sequence of positive ints, else raises ValueError."""
    # Lists are accepted because a JSON round trip of `get_config` turns tuples into lists.
    if isinstance(values, str | bytes) or not isinstance(values, Sequence) or not values:
        raise UserInputError(
            f"{owner}: expected `{arg}` to be a non-empty sequence of positive ints, "
            f"received {values!r} (of type {type(values).__name__})"
        )
    for value in values:
        require_positive_int(owner, f"{arg}[...]", value)
    return tuple(values)


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class FrozenStatisticsBatchNormalization(keras.layers.BatchNormalization):
    """Batch norm that always normalises with its moving statistics and never updates them.

    For fine-tuning with small per-replica batches, where batch statistics are too noisy: gamma and beta still
    train, the mean and variance stay as loaded (DeepLab's `fine_tune_batch_norm=False`).
    """

    def call(self, inputs: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        """Normalises in inference mode whatever `training` says."""
        del training
        return super().call(inputs, training=False)


@gin.configurable
def batch_norm(
    name: str | None = None,
    sync: bool = False,
    momentum: float = 0.99,
    epsilon: float = 1e-3,
    freeze_statistics: bool = False,
) -> keras.layers.Layer:
    """Returns the model's one BatchNormalization: cross-replica synchronised when `sync` is set, with frozen
    moving statistics when `freeze_statistics` is set."""
    # Every BN in the model comes from here, so `batch_norm.sync = True` in gin switches all of them at once.
    if freeze_statistics:
        # Frozen statistics are never computed from the batch, so there is nothing to synchronise.
        return FrozenStatisticsBatchNormalization(momentum=momentum, epsilon=epsilon, name=name)
    return keras.layers.BatchNormalization(momentum=momentum, epsilon=epsilon, synchronized=sync, name=name)


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
class ConvBNReLU(keras.layers.Layer):
    """Conv2D (he_normal; by default no bias and 'same' padding) → batch_norm() → optional ReLU.

    `use_bias`, `padding` and `bn_epsilon` exist so that a backbone can mirror a reference architecture
    (e.g. keras' ResNet, whose convs carry a bias) and load its weights; `bn_epsilon=None` leaves the epsilon
    to `batch_norm` (and so to gin).
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
        bn_epsilon: float | None = None,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        owner = type(self).__name__
        self.filters = require_positive_int(owner, "filters", filters)
        self.kernel_size = require_positive_int(owner, "kernel_size", kernel_size)
        self.strides, self.dilation_rate = require_stride_or_dilation(f"{owner} {self.name!r}", strides, dilation_rate)
        if padding not in VALID_PADDINGS:
            raise UserInputError(f"{owner} {self.name!r}: expected `padding` in {VALID_PADDINGS}, received {padding!r}")
        if bn_epsilon is not None and (
            isinstance(bn_epsilon, bool) or not isinstance(bn_epsilon, int | float) or bn_epsilon <= 0
        ):
            raise UserInputError(f"{owner} {self.name!r}: expected `bn_epsilon` > 0 or None, received {bn_epsilon!r}")
        self.activation = bool(activation)
        # The following BN's beta makes a conv bias redundant; it is kept only to mirror reference weights.
        self.use_bias = bool(use_bias)
        self.padding = padding
        self.bn_epsilon = bn_epsilon
        self.conv = keras.layers.Conv2D(
            filters,
            kernel_size,
            strides=strides,
            dilation_rate=dilation_rate,
            padding=padding,
            use_bias=self.use_bias,
            kernel_initializer="he_normal",
            name="conv",
        )
        # Passing epsilon only when set keeps a gin binding of `batch_norm.epsilon` in force everywhere else.
        self.bn = batch_norm(name="bn") if bn_epsilon is None else batch_norm(name="bn", epsilon=bn_epsilon)

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
