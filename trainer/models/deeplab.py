"""DeepLab semantic-segmentation models: backbone → ASPP → (decoder →) per-pixel logits.

`DeepLabV3Plus` fuses stride-4 low-level features in a decoder; `DeepLabV3` classifies the ASPP output directly.
"""

from collections.abc import Sequence
from typing import Any

import gin
import tensorflow as tf
import tf_keras as keras

from trainer.common import validate
from trainer.common.errors import UserInputError
from trainer.models.aspp import ASPP
from trainer.models.batch_norm import BatchNormOwner
from trainer.models.decoder import Decoder
from trainer.models.layers import resize_bilinear, spatial_size
from trainer.models.resnet import ResNet
from trainer.models.serialization import SERIALIZATION_PACKAGE

# The paper's ASPP rates for 513×513 crops: they scale inversely with the output stride.
DEFAULT_ASPP_RATES = {8: (12, 24, 36), 16: (6, 12, 18), 32: (3, 6, 9)}


def default_aspp_rates(output_stride: int) -> tuple[int, ...]:
    """Returns DeepLab's ASPP rates for `output_stride` (6/12/18 at 16, 12/24/36 at 8)."""
    if output_stride not in DEFAULT_ASPP_RATES:
        raise UserInputError(
            f"ASPP rates: expected an output stride in {sorted(DEFAULT_ASPP_RATES)} to derive them from, "
            f"received {output_stride!r}; set `aspp_rates` explicitly"
        )
    return DEFAULT_ASPP_RATES[output_stride]


class _DeepLab(BatchNormOwner, keras.Model):
    """Shared parts: the backbone, ASPP and the 1×1 classifier; subclasses decide what feeds the classifier."""

    DEFAULT_NAME = "deeplab"

    def __init__(
        self,
        num_classes: int,
        backbone: keras.Model | None = None,
        aspp_filters: int = 256,
        aspp_rates: Sequence[int] | None = None,
        aspp_dropout_rate: float = 0.1,
        aspp_pool_size: Sequence[int] | None = None,
        separable_convs: bool = False,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name or self.DEFAULT_NAME, **kwargs)
        owner = type(self).__name__
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise UserInputError(
                f"{owner}: expected `num_classes` to be an int >= 2, "
                f"received {num_classes!r} (of type {type(num_classes).__name__})"
            )
        self.num_classes = num_classes
        if backbone is None:
            backbone = ResNet()  # gin-configured
        if not isinstance(backbone, keras.layers.Layer):
            raise UserInputError(
                f"{owner}: expected `backbone` to be a keras Model returning low_level/high_level features, "
                f"received {backbone!r} (of type {type(backbone).__name__})"
            )
        self.backbone = backbone
        self.aspp_filters = validate.positive_int(f"{owner}.aspp_filters", aspp_filters)
        if aspp_rates is None:
            aspp_rates = default_aspp_rates(getattr(backbone, "output_stride", None))
        self.separable_convs = bool(separable_convs)
        self.aspp = ASPP(
            aspp_filters,
            aspp_rates,
            aspp_dropout_rate,
            pool_size=aspp_pool_size,
            separable=self.separable_convs,
            name="aspp",
        )
        self.aspp_rates = self.aspp.atrous_rates
        self.aspp_dropout_rate = self.aspp.dropout_rate
        self.aspp_pool_size = self.aspp.pool_size
        self.classifier = keras.layers.Conv2D(num_classes, 1, name="classifier")

    def _head(self, features: dict[str, tf.Tensor], training: bool | None) -> tf.Tensor:
        raise NotImplementedError

    def call(self, images: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        """Returns float32 logits [N, H, W, num_classes] for NHWC `images` of any spatial size."""
        features = self.backbone(images, training=training)
        # Cast before upsampling: softmax/cross-entropy want float32 logits and the resize is cheap in fp32.
        logits = tf.cast(self.classifier(self._head(features, training)), tf.float32)
        return resize_bilinear(logits, spatial_size(images))

    def get_config(self) -> dict[str, Any]:
        """Returns the constructor arguments, with the backbone serialised."""
        return {
            **super().get_config(),
            "name": self.name,
            "trainable": self.trainable,
            "num_classes": self.num_classes,
            "backbone": keras.layers.serialize(self.backbone),
            "aspp_filters": self.aspp_filters,
            "aspp_rates": self.aspp_rates,
            "aspp_dropout_rate": self.aspp_dropout_rate,
            "aspp_pool_size": self.aspp_pool_size,
            "separable_convs": self.separable_convs,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "_DeepLab":
        """Rebuilds the model (untrained) from `get_config()`, deserialising the backbone."""
        config = dict(config)
        if isinstance(config.get("backbone"), dict):
            config["backbone"] = keras.layers.deserialize(config["backbone"])
        return super().from_config(config)


@gin.configurable
@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class DeepLabV3Plus(_DeepLab):
    """DeepLabV3+ returning float32 logits [N, H, W, num_classes] at the input's resolution.

    `aspp_rates=None` derives the rates from the backbone's output stride; `separable_convs` makes the ASPP
    atrous branches and the decoder's 3×3 convs depthwise-separable, as in the DeepLabV3+ paper.
    """

    DEFAULT_NAME = "deeplab_v3_plus"

    def __init__(
        self,
        num_classes: int,
        backbone: keras.Model | None = None,
        aspp_filters: int = 256,
        aspp_rates: Sequence[int] | None = None,
        aspp_dropout_rate: float = 0.1,
        aspp_pool_size: Sequence[int] | None = None,
        low_level_filters: int = 48,
        decoder_filters: int = 256,
        separable_convs: bool = False,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            num_classes,
            backbone,
            aspp_filters,
            aspp_rates,
            aspp_dropout_rate,
            aspp_pool_size,
            separable_convs,
            name=name,
            **kwargs,
        )
        owner = type(self).__name__
        self.low_level_filters = validate.positive_int(f"{owner}.low_level_filters", low_level_filters)
        self.decoder_filters = validate.positive_int(f"{owner}.decoder_filters", decoder_filters)
        self.decoder = Decoder(low_level_filters, decoder_filters, separable=self.separable_convs, name="decoder")

    def _head(self, features: dict[str, tf.Tensor], training: bool | None) -> tf.Tensor:
        context = self.aspp(features["high_level"], training=training)
        return self.decoder((context, features["low_level"]), training=training)

    def get_config(self) -> dict[str, Any]:
        """Returns the constructor arguments, with the backbone serialised."""
        config = super().get_config()
        config.update({"low_level_filters": self.low_level_filters, "decoder_filters": self.decoder_filters})
        return config


@gin.configurable
@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class DeepLabV3(_DeepLab):
    """DeepLabV3 (no decoder): the classifier reads the ASPP output at the backbone's output stride.

    `aspp_rates=None` derives the rates from the backbone's output stride; `separable_convs` makes the ASPP
    atrous branches depthwise-separable.
    """

    DEFAULT_NAME = "deeplab_v3"

    def _head(self, features: dict[str, tf.Tensor], training: bool | None) -> tf.Tensor:
        return self.aspp(features["high_level"], training=training)
