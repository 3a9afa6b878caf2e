"""Initialising a fresh model from local pretrained files: ImageNet `.h5` backbones or this trainer's checkpoints."""

import gin
import tf_keras as keras
from absl import logging

from trainer.common.errors import UserInputError
from trainer.models import pretrained


@gin.configurable("init")
def initialize_model(
    model: keras.Model,
    keras_h5: str | None = None,
    checkpoint: str | None = None,
    checkpoint_parts: str = "backbone",
) -> None:
    """Loads pretrained weights into a freshly built `model` (never fetched from a hub: local paths or gs://).

    Args:
      model: a built DeepLab model (its `backbone`, `aspp`, `decoder`, `classifier`).
      keras_h5: ImageNet weights of the backbone in the tf_keras-applications `.h5` format (e.g.
        `resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5`), matched by layer name.
      checkpoint: a checkpoint written by this trainer (prefix or directory) to fine-tune from.
      checkpoint_parts: which parts of `checkpoint` to restore: backbone, backbone+aspp or all (a different
        number of classes re-initialises only the classifier).
    """
    if keras_h5 and checkpoint:
        raise UserInputError(
            "gin bindings init.keras_h5 and init.checkpoint: expected at most one source of initial weights, "
            f"received both ({keras_h5!r} and {checkpoint!r})."
        )
    if keras_h5:
        report = pretrained.load_keras_applications_h5(model.backbone, keras_h5)
        logging.info("Initialised the backbone from %s: %d layers matched.", keras_h5, len(report.matched))
    elif checkpoint:
        parts = pretrained.restore_from_checkpoint(model, checkpoint, parts=checkpoint_parts)
        logging.info("Initialised %s from %s.", ", ".join(parts), checkpoint)
