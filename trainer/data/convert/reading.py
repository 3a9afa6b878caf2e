"""Reading source files for the converters: bytes and label PNGs through `tf.io.gfile`, label lookup tables."""

import io
import os
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
from PIL import Image

from trainer.common.errors import UserInputError
from trainer.data.convert.source import BadExample


def read_bytes(path: str) -> bytes:
    """Returns the contents of `path` (local or gs://)."""
    with tf.io.gfile.GFile(path, "rb") as f:
        return f.read()


def read_label_png(path: str) -> np.ndarray:
    """Returns the uint8 [H, W] values of a single-channel label PNG: palette indices or grey levels.

    Palette PNGs (PASCAL VOC's `SegmentationClass`) store class ids as palette indices: those are read, not
    the colours they display as (TensorFlow's PNG decoder would return the colours).

    Raises:
      BadExample: if the file is not a palette or 8-bit greyscale image.
    """
    with Image.open(io.BytesIO(read_bytes(path))) as image:
        if image.mode not in ("P", "L"):
            raise BadExample(
                f"expected a label PNG of class ids (palette or 8-bit greyscale), received an image of mode "
                f"{image.mode!r}; colour-coded masks must be converted to class ids first"
            )
        return np.asarray(image, dtype=np.uint8)


def lookup_table(mapping: dict[int, int], default: int | None = None) -> np.ndarray:
    """Returns a uint8 table of 256 entries mapping source label values to class ids.

    Values absent from `mapping` map to `default`, or to themselves when `default` is None.
    """
    table = np.arange(256, dtype=np.uint8) if default is None else np.full(256, default, np.uint8)
    for source, target in mapping.items():
        table[source] = target
    return table


def parse_label_map(text: str, flag: str = "--label_map") -> dict[int, int]:
    """Parses "source:target,..." (e.g. "1:1,2:0,3:255") into a dict of label values in [0, 255].

    Raises:
      UserInputError: naming `flag` when an entry is malformed or out of range.
    """
    mapping = {}
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        try:
            source, target = (int(v) for v in entry.split(":"))
        except ValueError:
            raise UserInputError(
                f"{flag}: expected entries 'source:target' of ints separated by commas, received {entry!r}"
            ) from None
        if not (0 <= source <= 255 and 0 <= target <= 255):
            raise UserInputError(f"{flag}: expected label values in [0, 255], received {entry!r}")
        mapping[source] = target
    return mapping


def gfile_open(path: str):
    """Opens `path` (local or gs://) for binary reading."""
    return tf.io.gfile.GFile(path, "rb")


def glob(pattern: str) -> list[str]:
    """Returns the sorted paths matching `pattern` (local or gs://)."""
    return sorted(tf.io.gfile.glob(pattern))


def exists(path: str) -> bool:
    return tf.io.gfile.exists(path)


def isdir(path: str) -> bool:
    return tf.io.gfile.isdir(path)


def listdir(path: str) -> list[str]:
    return sorted(tf.io.gfile.listdir(path))


def find_root(source_dir: str, below: Sequence[str], subdirectories: Sequence[str], description: str) -> str:
    """Returns the first of `source_dir` and the paths `below` it that holds every one of `subdirectories`.

    Raises:
      UserInputError: naming `description` and the places looked in, when none does.
    """
    candidates = [source_dir, *(os.path.join(source_dir, path) for path in below)]
    for candidate in candidates:
        if all(isdir(os.path.join(candidate, d)) for d in subdirectories):
            return candidate
    raise UserInputError(f"--source_dir: expected {description} (looked in {candidates}), received {source_dir!r}")
