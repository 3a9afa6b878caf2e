"""Atrous Spatial Pyramid Pooling: multi-rate context plus a global image-pooling branch."""

from collections.abc import Sequence
from typing import Any

import tensorflow as tf
import tf_keras as keras

from trainer.common import validate
from trainer.common.errors import UserInputError
from trainer.models.batch_norm import BatchNormOwner
from trainer.models.dropout import ResumableDropout
from trainer.models.layers import ConvBNReLU, resize_bilinear, spatial_size
from trainer.models.separable import SeparableConvBNReLU
from trainer.models.serialization import SERIALIZATION_PACKAGE


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class ASPP(BatchNormOwner, keras.layers.Layer):
    """ASPP (DeepLabV3): 1×1, one dilated 3×3 per rate and image pooling, concatenated and projected.

    Image pooling averages the whole feature map by default. With `pool_size` (the feature size of the training
    crop, e.g. (33, 33) for 513×513 at output stride 16) it averages windows of that size instead, as DeepLab
    does for fixed-size crops; larger inputs at inference then get a map of local averages, resized back, and
    inputs smaller than the window fall back to the global average. `separable` makes the atrous branches
    depthwise-separable convs.
    """

    def __init__(
        self,
        filters: int = 256,
        atrous_rates: Sequence[int] = (6, 12, 18),
        dropout_rate: float = 0.1,
        pool_size: Sequence[int] | None = None,
        separable: bool = False,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        owner = type(self).__name__
        self.filters = validate.positive_int(f"{owner}.filters", filters)
        self.atrous_rates = validate.positive_ints(f"{owner}.atrous_rates", atrous_rates)
        if isinstance(dropout_rate, bool) or not isinstance(dropout_rate, int | float) or not 0 <= dropout_rate < 1:
            raise UserInputError(f"{owner}: expected `dropout_rate` in [0, 1), received {dropout_rate!r}")
        self.dropout_rate = float(dropout_rate)
        self.pool_size = None if pool_size is None else validate.size_pair(f"{owner}.pool_size", pool_size)
        self.separable = bool(separable)
        self.conv_1x1 = ConvBNReLU(filters, 1, name="conv_1x1")
        atrous_conv = SeparableConvBNReLU if self.separable else ConvBNReLU
        self.atrous_convs = [
            atrous_conv(filters, 3, dilation_rate=rate, name=f"atrous_conv_rate{rate}") for rate in self.atrous_rates
        ]
        # BN over a 1×1 pooled map has a degenerate batch at batch size 1; DeepLab keeps it and so do we.
        self.pool_conv = ConvBNReLU(filters, 1, name="image_pooling_conv")
        self.projection = ConvBNReLU(filters, 1, name="projection")
        self.dropout = ResumableDropout(self.dropout_rate, name="dropout")

    def call(self, inputs: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        """Returns the projected multi-scale context for an NHWC feature map, same spatial size."""
        branches = [self.conv_1x1(inputs, training=training)]
        branches += [conv(inputs, training=training) for conv in self.atrous_convs]
        pooled = self.pool_conv(self.image_pool(inputs), training=training)
        branches.append(resize_bilinear(pooled, spatial_size(inputs)))
        x = tf.concat(branches, axis=-1)
        x = self.projection(x, training=training)
        return self.dropout(x, training=training)

    def image_pool(self, inputs: tf.Tensor) -> tf.Tensor:
        """Averages over `pool_size` windows where the feature map is static and large enough, else globally."""
        height, width = inputs.shape[1:3]
        if self.pool_size is None or height is None or width is None:
            return tf.reduce_mean(inputs, axis=[1, 2], keepdims=True)
        window = [min(self.pool_size[0], height), min(self.pool_size[1], width)]
        return tf.nn.avg_pool2d(inputs, ksize=window, strides=1, padding="VALID")

    def get_config(self) -> dict[str, Any]:
        """Returns the constructor arguments."""
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "atrous_rates": self.atrous_rates,
                "dropout_rate": self.dropout_rate,
                "pool_size": self.pool_size,
                "separable": self.separable,
            }
        )
        return config
