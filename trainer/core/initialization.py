"""Initialising a fresh model from local pretrained files: ImageNet `.h5` backbones or this trainer's checkpoints."""

import dataclasses

import gin
import tf_keras as keras
from absl import logging

from trainer.common import validate
from trainer.common.errors import UserInputError
from trainer.models import keras_weights, pretrained

# What `init.keras_weights` may name: Keras Applications publishes ImageNet weights only.
KERAS_WEIGHTS = ("imagenet",)


@gin.configurable("init")
@dataclasses.dataclass(frozen=True)
class InitConfig:
    """Where a fresh run's initial weights come from: local paths or gs://, downloaded only with `keras_weights`.

    `keras_h5`: ImageNet weights of the backbone in the tf_keras-applications `.h5` format (e.g.
    `resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5`), matched by layer name. `checkpoint`: a checkpoint
    written by this trainer (prefix or directory) to fine-tune from; `checkpoint_parts`: which of its parts to
    restore (backbone, backbone+aspp or all; a different number of classes re-initialises only the classifier).
    `keras_weights = 'imagenet'`: the only setting that downloads anything: the Keras Applications ImageNet `.h5`
    of the chosen backbone, through `keras.utils.get_file` into `weights_cache_dir` (default `~/.keras`; may be
    `gs://`), checked against the hash Keras publishes, then loaded as `keras_h5` would be.
    """

    keras_h5: str | None = None
    checkpoint: str | None = None
    checkpoint_parts: str = "backbone"
    keras_weights: str | None = None
    weights_cache_dir: str | None = None

    def __post_init__(self):
        if self.keras_h5 and self.checkpoint:
            raise UserInputError(
                "gin bindings init.keras_h5 and init.checkpoint: expected at most one source of initial weights, "
                f"received both ({self.keras_h5!r} and {self.checkpoint!r})."
            )
        if self.keras_weights is not None:
            validate.choice("init.keras_weights", self.keras_weights, KERAS_WEIGHTS)
            others = {"init.keras_h5": self.keras_h5, "init.checkpoint": self.checkpoint}
            for binding, value in others.items():
                if value:
                    raise UserInputError(
                        f"gin bindings init.keras_weights and {binding}: expected at most one source of initial "
                        f"weights, received both ({self.keras_weights!r} and {value!r})."
                    )


def initialize_model(model: keras.Model, config: InitConfig) -> None:
    """Loads the pretrained weights `config` names into a freshly built DeepLab `model` (nothing if none)."""
    if config.keras_weights:
        path = keras_weights.fetch(keras_weights.imagenet_weights_file(model.backbone), config.weights_cache_dir)
        report = pretrained.load_keras_applications_h5(model.backbone, path)
        logging.info("Initialised the backbone from %s: %d layers matched.", path, len(report.matched))
    elif config.keras_h5:
        report = pretrained.load_keras_applications_h5(model.backbone, config.keras_h5)
        logging.info("Initialised the backbone from %s: %d layers matched.", config.keras_h5, len(report.matched))
        for adapted in report.adapted_to_channels:
            logging.info("Adapted RGB weights to the dataset's channels: %s.", adapted)
    elif config.checkpoint:
        parts = pretrained.restore_from_checkpoint(model, config.checkpoint, parts=config.checkpoint_parts)
        logging.info("Initialised %s from %s.", ", ".join(parts), config.checkpoint)
