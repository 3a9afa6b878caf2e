"""Depthwise-separable conv-BN-ReLU: DeepLabV3+'s replacement for 3×3 convs in ASPP, decoder and Xception-65."""

from typing import Any

import tensorflow as tf
import tf_keras as keras

from trainer.common import validate
from trainer.models.atrous import AtrousDepthwiseConv2D
from trainer.models.batch_norm import BatchNormOwner, batch_norm_layer
from trainer.models.layers import require_stride_or_dilation
from trainer.models.serialization import SERIALIZATION_PACKAGE


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class SeparableConvBNReLU(BatchNormOwner, keras.layers.Layer):
    """Depthwise k×k (dilated) → BN → ReLU → pointwise 1×1 → BN → ReLU, as DeepLab's split separable conv."""

    def __init__(
        self,
        filters: int,
        kernel_size: int = 3,
        strides: int = 1,
        dilation_rate: int = 1,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        owner = f"{type(self).__name__}({self.name!r})"
        self.filters = validate.positive_int(f"{owner}.filters", filters)
        self.kernel_size = validate.positive_int(f"{owner}.kernel_size", kernel_size)
        self.strides, self.dilation_rate = require_stride_or_dilation(owner, strides, dilation_rate)
        self.depthwise = AtrousDepthwiseConv2D(
            kernel_size,
            strides=strides,
            dilation_rate=dilation_rate,
            padding="same",
            use_bias=False,
            depthwise_initializer="he_normal",
            name="depthwise",
        )
        self.depthwise_bn = batch_norm_layer("depthwise_bn")
        self.pointwise = keras.layers.Conv2D(
            filters, 1, use_bias=False, kernel_initializer="he_normal", name="pointwise"
        )
        self.pointwise_bn = batch_norm_layer("pointwise_bn")

    def call(self, inputs: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        """Applies the depthwise and pointwise convs, each followed by BN and ReLU."""
        x = tf.nn.relu(self.depthwise_bn(self.depthwise(inputs), training=training))
        return tf.nn.relu(self.pointwise_bn(self.pointwise(x), training=training))

    def get_config(self) -> dict[str, Any]:
        """Returns the constructor arguments."""
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "kernel_size": self.kernel_size,
                "strides": self.strides,
                "dilation_rate": self.dilation_rate,
            }
        )
        return config
