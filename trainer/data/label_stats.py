"""Label statistics of a split (pixels and images per class) and the mistakes they reveal.

The one mistake that costs a new user a whole run: binary masks saved as 0/255 PNGs with 255 also the ignore
label, so every foreground pixel is skipped and the model learns background only. The converter and
`tfrecord_dataset` stop on it with the fix.
"""

import dataclasses

import numpy as np
from absl import logging

from trainer.common.errors import UserInputError

NUM_VALUES = 256


@dataclasses.dataclass
class LabelCounts:
    """Pixels of each label value over a split, and the images holding each value."""

    pixels: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(NUM_VALUES, np.int64))
    images: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(NUM_VALUES, np.int64))

    def add(self, histogram: np.ndarray) -> None:
        """Adds one image's histogram of label values (`histogram(label)`)."""
        self.pixels += histogram
        self.images += histogram > 0

    def class_pixels(self, num_classes: int) -> tuple[int, ...]:
        return tuple(int(v) for v in self.pixels[:num_classes])

    def class_images(self, num_classes: int) -> tuple[int, ...]:
        return tuple(int(v) for v in self.images[:num_classes])


def histogram(label: np.ndarray) -> np.ndarray:
    """int64 [256]: how many pixels of a uint8 label map hold each value."""
    return np.bincount(np.asarray(label, np.uint8).ravel(), minlength=NUM_VALUES).astype(np.int64)


def check_not_binary_ignored(
    where: str, pixels: np.ndarray, class_names: tuple[str, ...], ignore_label: int, fix: str
) -> None:
    """Raises UserInputError when the only label values are 0 and the ignore label: 0/255 binary masks.

    Args:
      where: what was counted, for the message (e.g. "split 'train'").
      pixels: pixels per label value [256].
      fix: how to map the foreground to class 1, for the message.
    """
    values = set(np.flatnonzero(pixels).tolist())
    if len(class_names) < 2 or ignore_label not in values or not values <= {0, ignore_label}:
        return
    share = pixels[ignore_label] / pixels.sum()
    raise UserInputError(
        f"{where}: every mask holds only the values 0 and {ignore_label}, and {ignore_label} is the ignore label "
        f"(--ignore_label / ignore_label), so the {share:.1%} of pixels that look like foreground would be "
        f"ignored and class {class_names[1]!r} never learnt: binary masks saved as 0/{ignore_label}. {fix}"
    )


def warn_missing_classes(where: str, class_pixels: tuple[int, ...], class_names: tuple[str, ...]) -> list[str]:
    """Logs a warning naming the classes without a single labelled pixel; returns their names."""
    missing = [name for name, count in zip(class_names, class_pixels, strict=True) if count == 0]
    if missing:
        logging.warning(
            "%s has no labelled pixel of %d class(es): %s. The model cannot learn them from it; check the class "
            "list and the mask values (--label_map).",
            where,
            len(missing),
            ", ".join(missing),
        )
    return missing
