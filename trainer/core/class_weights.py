"""`loss.class_weights = 'inverse_frequency'` or `'median_frequency'`: weights from the training pixel counts."""

import dataclasses

import numpy as np
from absl import logging

from trainer.common.errors import UserInputError
from trainer.core.losses import SegmentationLoss
from trainer.data.info import DatasetInfo


def weights_from_counts(rule: str, class_pixels: tuple[int, ...]) -> tuple[float, ...]:
    """One weight per class from its labelled-pixel count; a class without pixels gets 0 (nothing to weight).

    - `inverse_frequency`: w_c = 1 / (C f_c), f_c the class's share of the labelled pixels (a uniform dataset
      gets 1 everywhere).
    - `median_frequency` (Eigen & Fergus 2015, shares over all labelled pixels): w_c = median(f) / f_c, the
      median over the classes that have pixels.
    """
    counts = np.asarray(class_pixels, np.float64)
    present = counts > 0
    frequency = counts / counts.sum()
    if rule == "inverse_frequency":
        scale = 1.0 / present.sum()
    elif rule == "median_frequency":
        scale = float(np.median(frequency[present]))
    else:
        raise UserInputError(
            f"gin binding loss.class_weights: expected 'inverse_frequency' or 'median_frequency', received {rule!r}."
        )
    with np.errstate(divide="ignore"):
        weights = np.where(present, scale / frequency, 0.0)
    return tuple(float(w) for w in weights)


def resolve(loss: SegmentationLoss, info: DatasetInfo) -> SegmentationLoss:
    """Returns `loss` with a rule's class weights computed from `info`'s training split (logged), else `loss`.

    Raises:
      UserInputError: for a rule when the dataset carries no pixel counts (not written by the converter).
    """
    rule = loss.class_weights
    if not isinstance(rule, str):
        return loss
    split = info.train_split()
    if split is None or len(split.class_pixels) != info.num_classes or not any(split.class_pixels):
        raise UserInputError(
            f"gin binding loss.class_weights = {rule!r}: expected a dataset with per-class pixel counts (one "
            "converted by `python -m trainer.data.convert`, read with converted_dataset), but dataset "
            f"{info.name!r} has none. Re-convert it, or give the weights as a tuple."
        )
    weights = weights_from_counts(rule, split.class_pixels)
    table = ", ".join(
        f"{name} {weight:.4g} ({pixels:,} px)"
        for name, weight, pixels in zip(info.class_names, weights, split.class_pixels, strict=True)
    )
    logging.info("loss.class_weights = %r from split %r: %s", rule, split.name, table)
    return dataclasses.replace(loss, class_weights=weights)
