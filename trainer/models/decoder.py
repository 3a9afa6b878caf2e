"""DeepLabV3+ decoder: fuses upsampled ASPP context with stride-4 low-level features."""

from collections.abc import Sequence
from typing import Any

import tensorflow as tf
import tf_keras as keras

from trainer.common import validate
from trainer.common.errors import UserInputError
from trainer.models.batch_norm import BatchNormOwner
from trainer.models.layers import ConvBNReLU, resize_bilinear, spatial_size
from trainer.models.separable import SeparableConvBNReLU
from trainer.models.serialization import SERIALIZATION_PACKAGE


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class Decoder(BatchNormOwner, keras.layers.Layer):
    """Reduces low-level features, concatenates the upsampled ASPP output, refines with two 3×3 convs.

    `separable` makes the two refining convs depthwise-separable (DeepLabV3+'s `decoder_use_separable_conv`).
    """

    def __init__(
        self,
        low_level_filters: int = 48,
        filters: int = 256,
        separable: bool = False,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        owner = type(self).__name__
        self.low_level_filters = validate.positive_int(f"{owner}.low_level_filters", low_level_filters)
        self.filters = validate.positive_int(f"{owner}.filters", filters)
        self.separable = bool(separable)
        # Few low-level channels so they do not outweigh the semantically richer ASPP features.
        self.low_level_conv = ConvBNReLU(low_level_filters, 1, name="low_level_conv")
        refine_conv = SeparableConvBNReLU if self.separable else ConvBNReLU
        self.refine_conv1 = refine_conv(filters, 3, name="refine_conv1")
        self.refine_conv2 = refine_conv(filters, 3, name="refine_conv2")

    def call(self, inputs: Sequence[tf.Tensor], training: bool | None = None) -> tf.Tensor:
        """Returns decoded features at the low-level resolution from (aspp_features, low_level_features)."""
        if len(inputs) != 2:
            raise UserInputError(
                f"{type(self).__name__}: expected inputs (aspp_features, low_level_features), "
                f"received {len(inputs)} tensors"
            )
        aspp_features, low_level_features = inputs
        low_level = self.low_level_conv(low_level_features, training=training)
        context = resize_bilinear(aspp_features, spatial_size(low_level))
        x = tf.concat([context, low_level], axis=-1)
        x = self.refine_conv1(x, training=training)
        return self.refine_conv2(x, training=training)

    def get_config(self) -> dict[str, Any]:
        """Returns the constructor arguments."""
        config = super().get_config()
        config.update(
            {"low_level_filters": self.low_level_filters, "filters": self.filters, "separable": self.separable}
        )
        return config
