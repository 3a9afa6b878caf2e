"""DeepLabV3+ semantic-segmentation model: backbone → ASPP → decoder → per-pixel logits."""

from collections.abc import Sequence
from typing import Any

import gin
import tensorflow as tf
import tf_keras as keras

from trainer.config import ConfigError
from trainer.models.aspp import ASPP
from trainer.models.decoder import Decoder
from trainer.models.layers import SERIALIZATION_PACKAGE, require_positive_int, resize_bilinear, spatial_size
from trainer.models.resnet import ResNet


@gin.configurable
@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class DeepLabV3Plus(keras.Model):
    """DeepLabV3+ returning float32 logits [N, H, W, num_classes] at the input's resolution."""

    def __init__(
        self,
        num_classes: int,
        backbone: keras.Model | None = None,
        aspp_filters: int = 256,
        aspp_rates: Sequence[int] = (6, 12, 18),
        aspp_dropout_rate: float = 0.1,
        low_level_filters: int = 48,
        decoder_filters: int = 256,
        name: str = "deeplab_v3_plus",
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        owner = type(self).__name__
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ConfigError(
                f"{owner}: expected `num_classes` to be an int >= 2, "
                f"received {num_classes!r} (of type {type(num_classes).__name__})"
            )
        self.num_classes = num_classes
        if backbone is None:
            backbone = ResNet()  # gin-configured
        if not isinstance(backbone, keras.layers.Layer):
            raise ConfigError(
                f"{owner}: expected `backbone` to be a keras Model returning low_level/high_level features, "
                f"received {backbone!r} (of type {type(backbone).__name__})"
            )
        self.backbone = backbone
        self.aspp_filters = require_positive_int(owner, "aspp_filters", aspp_filters)
        self.low_level_filters = require_positive_int(owner, "low_level_filters", low_level_filters)
        self.decoder_filters = require_positive_int(owner, "decoder_filters", decoder_filters)
        self.aspp = ASPP(aspp_filters, aspp_rates, aspp_dropout_rate, name="aspp")
        self.aspp_rates = self.aspp.atrous_rates
        self.aspp_dropout_rate = self.aspp.dropout_rate
        self.decoder = Decoder(low_level_filters, decoder_filters, name="decoder")
        self.classifier = keras.layers.Conv2D(num_classes, 1, name="classifier")

    def call(self, images: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        """Returns float32 logits [N, H, W, num_classes] for NHWC `images` of any spatial size."""
        features = self.backbone(images, training=training)
        context = self.aspp(features["high_level"], training=training)
        decoded = self.decoder((context, features["low_level"]), training=training)
        # Cast before upsampling: softmax/cross-entropy want float32 logits and the resize is cheap in fp32.
        logits = tf.cast(self.classifier(decoded), tf.float32)
        return resize_bilinear(logits, spatial_size(images))

    def get_config(self) -> dict[str, Any]:
        """Returns the constructor arguments, with the backbone serialised."""
        return {
            "name": self.name,
            "trainable": self.trainable,
            "num_classes": self.num_classes,
            "backbone": keras.layers.serialize(self.backbone),
            "aspp_filters": self.aspp_filters,
            "aspp_rates": self.aspp_rates,
            "aspp_dropout_rate": self.aspp_dropout_rate,
            "low_level_filters": self.low_level_filters,
            "decoder_filters": self.decoder_filters,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "DeepLabV3Plus":
        """Rebuilds the model (untrained) from `get_config()`, deserialising the backbone."""
        config = dict(config)
        if isinstance(config.get("backbone"), dict):
            config["backbone"] = keras.layers.deserialize(config["backbone"])
        return cls(**config)
