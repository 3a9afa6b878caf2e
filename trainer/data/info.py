"""`DatasetInfo`: what a training run needs to know about a dataset, and its JSON file."""

import dataclasses
import json
import numbers
import os
import re

import tensorflow as tf

from trainer.common import files, validate
from trainer.common.errors import UserInputError

INFO_FILENAME = "dataset_info.json"

RGB = tuple[int, int, int]


@dataclasses.dataclass(frozen=True)
class SplitInfo:
    """One split written by `trainer.data.convert`: its files and what was found in them.

    Attributes:
      name: the split's name, e.g. `train`, `val`, `trainaug`.
      files: its TFRecord files.
      num_examples: examples written.
      num_skipped: bad examples left out (`--skip_bad_examples`).
      min_image_size: (height, width), each the smallest over the split.
      max_image_size: (height, width), each the largest over the split.
      image_sizes: the most common image sizes as (height, width, count), most frequent first; the counts
        of sizes not listed add up to `num_examples` minus the counts listed.
      class_pixels: labelled pixels of each class, in class-id order (empty when not counted).
      class_images: images holding at least one pixel of each class, in class-id order (empty when not counted).
      ignored_pixels: pixels carrying the ignore label.
    """

    name: str
    files: tuple[str, ...]
    num_examples: int
    num_skipped: int = 0
    min_image_size: tuple[int, int] | None = None
    max_image_size: tuple[int, int] | None = None
    image_sizes: tuple[tuple[int, int, int], ...] = ()
    class_pixels: tuple[int, ...] = ()
    class_images: tuple[int, ...] = ()
    ignored_pixels: int = 0

    def __post_init__(self):
        object.__setattr__(self, "files", tuple(self.files))
        for field in ("class_pixels", "class_images"):
            object.__setattr__(self, field, tuple(int(v) for v in getattr(self, field)))
        object.__setattr__(self, "image_sizes", tuple(tuple(int(v) for v in size) for size in self.image_sizes))
        for field in ("min_image_size", "max_image_size"):
            if getattr(self, field) is not None:
                object.__setattr__(self, field, tuple(int(v) for v in getattr(self, field)))


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """A segmentation dataset's classes, TFRecord files and sizes.

    Attributes:
      name: a short name for logs and summaries.
      num_classes: number of classes, the background included.
      class_names: one name per class, in class-id order.
      ignore_label: the label value of pixels that losses and metrics skip.
      train_files: TFRecord files of the training split.
      eval_files: TFRecord files of the evaluation split.
      num_train_examples: examples in `train_files`.
      num_eval_examples: examples in `eval_files`.
      max_image_size: (height, width) of the largest image, the padded size at evaluation; None if unknown.
      palette: one RGB colour per class for visualisations; None leaves the choice to the reader.
      splits: every split the converter wrote (train and eval among them); empty for other datasets.
      image_channels: channels (bands) of every image: 3 for RGB, 1 grey, 4 e.g. RGB + near-infrared, ...
      image_dtype: the pixel type of every image, `uint8` or `uint16`.
      channel_mean: each channel's mean pixel value over the training split (the converter computes it), or
        None; with `channel_std`, what `input_pipeline` normalises images other than RGB uint8 with.
      channel_std: each channel's standard deviation over the training split, or None.
    """

    name: str
    num_classes: int
    class_names: tuple[str, ...]
    ignore_label: int
    train_files: tuple[str, ...]
    eval_files: tuple[str, ...]
    num_train_examples: int
    num_eval_examples: int
    max_image_size: tuple[int, int] | None = None
    palette: tuple[RGB, ...] | None = None
    splits: tuple[SplitInfo, ...] = ()
    image_channels: int = 3
    image_dtype: str = "uint8"
    channel_mean: tuple[float, ...] | None = None
    channel_std: tuple[float, ...] | None = None

    def __post_init__(self):
        # Coerce lists (from JSON or gin) to tuples so instances stay hashable and compare equal.
        for field in ("class_names", "train_files", "eval_files"):
            object.__setattr__(self, field, tuple(getattr(self, field)))
        if self.max_image_size is not None:
            object.__setattr__(self, "max_image_size", tuple(int(v) for v in self.max_image_size))
        if self.palette is not None:
            # numpy ints (a palette computed with numpy) become ints; anything else is rejected below.
            palette = tuple(tuple(int(v) if isinstance(v, numbers.Integral) else v for v in c) for c in self.palette)
            object.__setattr__(self, "palette", palette)
        object.__setattr__(
            self, "splits", tuple(s if isinstance(s, SplitInfo) else SplitInfo(**s) for s in self.splits)
        )
        where = f"DatasetInfo(name={self.name!r})"
        validate.positive_int(f"{where}.num_classes", self.num_classes)
        if len(self.class_names) != self.num_classes:
            raise UserInputError(
                f"{where}: expected {self.num_classes} class_names (one per class), "
                f"received {len(self.class_names)}: {self.class_names}"
            )
        if 0 <= self.ignore_label < self.num_classes:
            raise UserInputError(
                f"{where}: expected ignore_label outside the class ids [0, {self.num_classes}), "
                f"received {self.ignore_label}"
            )
        for split in ("train", "eval"):
            if not getattr(self, f"{split}_files"):
                raise UserInputError(f"{where}: expected at least one file in {split}_files, received none")
            validate.positive_int(f"{where}.num_{split}_examples", getattr(self, f"num_{split}_examples"))
        if self.max_image_size is not None:
            validate.size_pair(f"{where}.max_image_size", self.max_image_size)
        if self.palette is not None:
            if len(self.palette) != self.num_classes:
                raise UserInputError(
                    f"{where}: expected a palette of {self.num_classes} colours (one per class), "
                    f"received {len(self.palette)}"
                )
            for colour in self.palette:
                if len(colour) != 3 or not all(isinstance(v, int) and 0 <= v <= 255 for v in colour):
                    raise UserInputError(
                        f"{where}: expected palette colours (r, g, b) of ints in [0, 255], received {colour}"
                    )
        validate.positive_int(f"{where}.image_channels", self.image_channels)
        validate.choice(f"{where}.image_dtype", self.image_dtype, ("uint8", "uint16"))
        for field in ("channel_mean", "channel_std"):
            values = getattr(self, field)
            if values is None:
                continue
            object.__setattr__(self, field, tuple(float(v) for v in values))
            if len(values) != self.image_channels:
                raise UserInputError(
                    f"{where}: expected {field} of {self.image_channels} values (one per channel), received {values}"
                )
        names = [split.name for split in self.splits]
        if len(set(names)) != len(names):
            raise UserInputError(f"{where}: expected distinct split names, received {names}")

    def train_split(self) -> SplitInfo | None:
        """The split the training files are (the converter's report on them), or None if not a converted split."""
        for split in self.splits:
            if split.files == self.train_files:
                return split
        return None

    def split(self, name: str) -> SplitInfo:
        """Returns the split called `name`.

        Raises:
          UserInputError: if there is no such split.
        """
        for split in self.splits:
            if split.name == name:
                return split
        raise UserInputError(
            f"DatasetInfo(name={self.name!r}): expected a split in {[s.name for s in self.splits]}, received {name!r}"
        )


def _relative(path: str, directory: str) -> str:
    # Files under the JSON's directory are stored relative so a dataset directory can be moved or copied
    # (say, to a bucket) as a whole; anything elsewhere keeps its absolute path.
    prefix = directory.rstrip("/") + "/"
    return path[len(prefix) :] if path.startswith(prefix) else path


def _resolve(path: str, directory: str) -> str:
    if "://" in path or os.path.isabs(path):
        return path
    return os.path.join(directory, path)


def save(info: DatasetInfo, path: str, files_relative_to: str | None = None) -> None:
    """Writes `info` as JSON to `path` (a `dataset_info.json`; local or gs://).

    File paths under `files_relative_to` (default: the JSON's directory) are stored relative to it; pass the
    final directory when writing into a staging directory that will be renamed into place.
    """
    directory = files_relative_to or os.path.dirname(path)
    record = dataclasses.asdict(info)
    record["train_files"] = [_relative(f, directory) for f in info.train_files]
    record["eval_files"] = [_relative(f, directory) for f in info.eval_files]
    for split in record["splits"]:
        split["files"] = [_relative(f, directory) for f in split["files"]]
    text = json.dumps(record, indent=2)
    # One line per list of numbers (a colour, a size) keeps palettes and histograms readable.
    text = re.sub(r"\[\s+([-\d.,\s]+?)\s+\]", lambda match: "[" + re.sub(r"\s+", " ", match.group(1)) + "]", text)
    files.write_atomically(path, text + "\n")


def load(path: str) -> DatasetInfo:
    """Reads a `DatasetInfo` written by `save`, resolving file paths against the JSON's directory.

    Raises:
      UserInputError: if the file is missing fields or has unknown ones.
    """
    directory = os.path.dirname(path)
    with tf.io.gfile.GFile(path, "r") as f:
        record = json.loads(f.read())
    fields = dataclasses.fields(DatasetInfo)
    expected = {field.name for field in fields}
    # Fields with defaults are optional, so JSON written before they existed still loads.
    required = {field.name for field in fields if field.default is dataclasses.MISSING}
    if set(record) - expected or not set(record) >= required:
        raise UserInputError(
            f"{path}: expected the fields {sorted(required)} and optionally {sorted(expected - required)}, "
            f"received {sorted(record)}"
        )
    record["train_files"] = [_resolve(f, directory) for f in record["train_files"]]
    record["eval_files"] = [_resolve(f, directory) for f in record["eval_files"]]
    splits = []
    for split in record.get("splits", ()):
        split_fields = {field.name for field in dataclasses.fields(SplitInfo)}
        if set(split) - split_fields:
            raise UserInputError(
                f"{path}: expected split fields within {sorted(split_fields)}, received {sorted(split)}"
            )
        splits.append(SplitInfo(**{**split, "files": [_resolve(f, directory) for f in split["files"]]}))
    record["splits"] = tuple(splits)
    return DatasetInfo(**record)
