"""What a converter describes: a source dataset, its splits and examples; and how an example becomes a record."""

import dataclasses
from collections.abc import Callable, Iterable
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from trainer.common import images
from trainer.data import label_stats, schema
from trainer.data.convert import image_files
from trainer.data.convert.bad_example import BadExample


@dataclasses.dataclass(frozen=True)
class SourceExample:
    """One example of a source dataset, read when the writer gets to it.

    Attributes:
      key: stored as `image/filename` (a path relative to the source, or a tfds id).
      location: where it comes from, named in errors (the image and mask paths).
      read: returns the image (its JPEG/PNG/BMP/GIF file bytes, or a uint8 [H, W, 3] array) and the label map
        (uint8 [H, W] of class ids and the ignore label, already mapped from the source's ids); raises
        `BadExample` (or an I/O or decoding error) when the example is unusable.
    """

    key: str
    location: str
    read: Callable[[], tuple[bytes | np.ndarray, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class SplitSource:
    """One split of a source dataset.

    Attributes:
      name: the split's name in the output (`train`, `val`, ...).
      examples: its examples; a sequence is written in a seeded random order, an iterable (tfds, already
        shuffled when prepared) in its own.
      num_examples: their number when known before reading them (it picks the number of shards), else None.
    """

    name: str
    examples: Iterable[SourceExample]
    num_examples: int | None


@dataclasses.dataclass(frozen=True)
class DatasetSource:
    """A source dataset as a converter describes it.

    Attributes:
      name: the dataset's name in the JSON.
      class_names: one per class id.
      ignore_label: the label of pixels to skip (outside the class ids).
      palette: one RGB colour per class; None takes PASCAL VOC's colour map (distinct colours for up to 256
        classes, the choice of the datasets that publish no palette of their own).
      splits: the splits to write.
      train_split: the split the JSON names as the training one.
      eval_split: the split the JSON names as the evaluation one.
      image_channels: the channels every image must have (3: RGB, grey and RGBA files made RGB).
      image_dtype: the pixel type every image must have, uint8 or uint16.
    """

    name: str
    class_names: tuple[str, ...]
    ignore_label: int
    splits: tuple[SplitSource, ...]
    train_split: str
    eval_split: str
    palette: tuple[tuple[int, int, int], ...] | None = None
    image_channels: int = 3
    image_dtype: str = "uint8"

    def __post_init__(self):
        object.__setattr__(self, "class_names", tuple(self.class_names))
        object.__setattr__(self, "splits", tuple(self.splits))
        if self.palette is None:
            object.__setattr__(self, "palette", tuple(map(tuple, images.voc_palette(len(self.class_names)).tolist())))


def _check_label(label: np.ndarray, num_classes: int, ignore_label: int) -> None:
    values = np.unique(label)
    bad = values[(values >= num_classes) & (values != ignore_label)]
    if bad.size:
        raise BadExample(
            f"expected label values in [0, {num_classes}) or the ignore label {ignore_label}, "
            f"received {', '.join(str(v) for v in bad[:8])}{' ...' if bad.size > 8 else ''}"
        )


class ConvertedExample(NamedTuple):
    """One example as the writer stores it, and what it counts of it."""

    serialized: bytes
    size: tuple[int, int]
    label_histogram: np.ndarray
    channel_sums: np.ndarray
    channel_squares: np.ndarray


def _image_and_encoding(image, channels: int, dtype: str) -> tuple[np.ndarray, bytes | None]:
    encoded = None
    if isinstance(image, bytes):
        # The file's own bytes are kept when the trainer reads the format (JPEG, PNG of RGB uint8); decoding
        # here checks them and gives the size. Other formats, and every other image, are stored re-encoded.
        if channels == 3 and dtype == "uint8" and schema.sniff_image_format(image):
            encoded = image
        image = image_files.decode(image, channels, dtype)
    return image_files.check(image, channels, dtype), encoded


def serialized_example(
    example: SourceExample, num_classes: int, ignore_label: int, channels: int = 3, dtype: str = "uint8"
) -> ConvertedExample:
    """Reads, decodes and checks one example; returns it serialized, with its size and statistics.

    Raises:
      BadExample: naming `example.location` and what is wrong with it.
    """
    try:
        image, label = example.read()
        image, encoded = _image_and_encoding(image, channels, dtype)
        label = np.asarray(label)
        if label.ndim == 3 and label.shape[-1] == 1:
            label = label[..., 0]
        if label.dtype != np.uint8 or label.ndim != 2:
            raise BadExample(
                f"expected a single-channel label map of uint8, received {label.dtype} {list(label.shape)}"
            )
        if image.shape[:2] != label.shape:
            raise BadExample(
                f"expected the label map to have the image's height and width {image.shape[0]}x{image.shape[1]}, "
                f"received {label.shape[0]}x{label.shape[1]}"
            )
        _check_label(label, num_classes, ignore_label)
        serialized = schema.encode_example(image, label, example.key, encoded_image=encoded)
        pixels = image.reshape(-1, channels).astype(np.float64)
        return ConvertedExample(
            serialized, label.shape, label_stats.histogram(label), pixels.sum(axis=0), np.square(pixels).sum(axis=0)
        )
    except BadExample as error:
        raise BadExample(f"{example.location}: {error}") from None
    except (OSError, ValueError, tf.errors.OpError) as error:
        # Unreadable or undecodable files (PIL raises OSError subclasses, numpy ValueError).
        raise BadExample(f"{example.location}: {type(error).__name__}: {error}") from None
