"""What a converter describes: a source dataset, its splits and examples; and how an example becomes a record."""

import dataclasses
from collections.abc import Callable, Iterable

import numpy as np
import tensorflow as tf

from trainer.common import images
from trainer.data import label_stats, schema


class BadExample(Exception):
    """An example that cannot be converted; the message says why (the writer adds which file)."""


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
    """

    name: str
    class_names: tuple[str, ...]
    ignore_label: int
    splits: tuple[SplitSource, ...]
    train_split: str
    eval_split: str
    palette: tuple[tuple[int, int, int], ...] | None = None

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


def serialized_example(
    example: SourceExample, num_classes: int, ignore_label: int
) -> tuple[bytes, tuple[int, int], np.ndarray]:
    """Reads, decodes and checks one example; returns it serialized, its size and its label histogram [256].

    Raises:
      BadExample: naming `example.location` and what is wrong with it.
    """
    try:
        image, label = example.read()
        encoded = None
        if isinstance(image, bytes):
            # The file's own bytes are kept when the trainer reads the format (JPEG, PNG); decoding here
            # checks them and gives the size. Other formats are stored PNG-encoded.
            encoded = image if schema.sniff_image_format(image) else None
            try:
                image = tf.io.decode_image(image, channels=3, expand_animations=False).numpy()
            except tf.errors.InvalidArgumentError as error:
                raise BadExample(f"the image does not decode ({error.message.splitlines()[0]})") from None
        image = np.asarray(image)
        if image.ndim == 3 and image.shape[-1] == 1:
            image = np.repeat(image, 3, axis=-1)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            raise BadExample(f"expected an RGB image of uint8, received {image.dtype} {list(image.shape)}")
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
        return serialized, label.shape, label_stats.histogram(label)
    except BadExample as error:
        raise BadExample(f"{example.location}: {error}") from None
    except (OSError, ValueError, tf.errors.OpError) as error:
        # Unreadable or undecodable files (PIL raises OSError subclasses, numpy ValueError).
        raise BadExample(f"{example.location}: {type(error).__name__}: {error}") from None
