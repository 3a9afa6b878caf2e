"""Initialising a fresh model from local pretrained files: ImageNet `.h5` backbones or this trainer's checkpoints."""

import dataclasses

import gin
import tf_keras as keras
from absl import logging

from trainer.common.errors import UserInputError
from trainer.models import pretrained


@gin.configurable("init")
@dataclasses.dataclass(frozen=True)
class InitConfig:
    """Where a fresh run's initial weights come from (never fetched from a hub: local paths or gs://).

    `keras_h5`: ImageNet weights of the backbone in the tf_keras-applications `.h5` format (e.g.
    `resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5`), matched by layer name. `checkpoint`: a checkpoint
    written by this trainer (prefix or directory) to fine-tune from; `checkpoint_parts`: which of its parts to
    restore (backbone, backbone+aspp or all; a different number of classes re-initialises only the classifier).
    """

    keras_h5: str | None = None
    checkpoint: str | None = None
    checkpoint_parts: str = "backbone"

    def __post_init__(self):
        if self.keras_h5 and self.checkpoint:
            raise UserInputError(
                "gin bindings init.keras_h5 and init.checkpoint: expected at most one source of initial weights, "
                f"received both ({self.keras_h5!r} and {self.checkpoint!r})."
            )


def initialize_model(model: keras.Model, config: InitConfig) -> None:
    """Loads the pretrained weights `config` names into a freshly built DeepLab `model` (nothing if none)."""
    if config.keras_h5:
        report = pretrained.load_keras_applications_h5(model.backbone, config.keras_h5)
        logging.info("Initialised the backbone from %s: %d layers matched.", config.keras_h5, len(report.matched))
        for adapted in report.adapted_to_channels:
            logging.info("Adapted RGB weights to the dataset's channels: %s.", adapted)
    elif config.checkpoint:
        parts = pretrained.restore_from_checkpoint(model, config.checkpoint, parts=config.checkpoint_parts)
        logging.info("Initialised %s from %s.", ", ".join(parts), config.checkpoint)
