"""`DatasetInfo`: what a training run needs to know about a dataset, and its JSON file."""

import dataclasses
import json
import os

import tensorflow as tf

from trainer.config import ConfigError

INFO_FILENAME = "dataset_info.json"


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

    def __post_init__(self):
        # Coerce lists (from JSON or gin) to tuples so instances stay hashable and compare equal.
        for field in ("class_names", "train_files", "eval_files"):
            object.__setattr__(self, field, tuple(getattr(self, field)))
        if self.max_image_size is not None:
            object.__setattr__(self, "max_image_size", tuple(int(v) for v in self.max_image_size))
        where = f"DatasetInfo(name={self.name!r})"
        if self.num_classes <= 0:
            raise ConfigError(f"{where}: expected num_classes > 0, received {self.num_classes}")
        if len(self.class_names) != self.num_classes:
            raise ConfigError(
                f"{where}: expected {self.num_classes} class_names (one per class), "
                f"received {len(self.class_names)}: {self.class_names}"
            )
        if 0 <= self.ignore_label < self.num_classes:
            raise ConfigError(
                f"{where}: expected ignore_label outside the class ids [0, {self.num_classes}), "
                f"received {self.ignore_label}"
            )
        for split in ("train", "eval"):
            if not getattr(self, f"{split}_files"):
                raise ConfigError(f"{where}: expected at least one file in {split}_files, received none")
            if getattr(self, f"num_{split}_examples") <= 0:
                raise ConfigError(
                    f"{where}: expected num_{split}_examples > 0, received {getattr(self, f'num_{split}_examples')}"
                )
        if self.max_image_size is not None and (len(self.max_image_size) != 2 or min(self.max_image_size) <= 0):
            raise ConfigError(
                f"{where}: expected max_image_size (height, width) of positive ints, received {self.max_image_size}"
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
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(json.dumps(record, indent=2) + "\n")


def load(path: str) -> DatasetInfo:
    """Reads a `DatasetInfo` written by `save`, resolving file paths against the JSON's directory.

    Raises:
      ValueError: if the file is missing fields or has unknown ones.
    """
    directory = os.path.dirname(path)
    with tf.io.gfile.GFile(path, "r") as f:
        record = json.loads(f.read())
    expected = {field.name for field in dataclasses.fields(DatasetInfo)}
    if set(record) - expected or not set(record) >= expected - {"max_image_size"}:
        raise ConfigError(f"{path}: expected the fields {sorted(expected)}, received {sorted(record)}")
    record["train_files"] = [_resolve(f, directory) for f in record["train_files"]]
    record["eval_files"] = [_resolve(f, directory) for f in record["eval_files"]]
    return DatasetInfo(**record)
