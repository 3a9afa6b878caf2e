"""Datasets of TFRecord files in the segmentation schema of `trainer.data.schema`: by glob pattern, or converted."""

import dataclasses
import os

import gin
import numpy as np
import tensorflow as tf
from absl import logging

from trainer.common.errors import UserInputError
from trainer.data import info as info_lib
from trainer.data import label_stats, schema

# Records whose labels `tfrecord_dataset` reads when it is built, to catch 0/255 binary masks early.
_RECORDS_CHECKED = 64


def _glob(patterns: str, binding: str) -> tuple[str, ...]:
    """Expands comma-separated glob patterns into a sorted, de-duplicated file list."""
    files: set[str] = set()
    for pattern in (p.strip() for p in patterns.split(",")):
        if pattern:
            files.update(tf.io.gfile.glob(pattern))
    if not files:
        raise UserInputError(f"{binding}: expected the pattern to match at least one file, {patterns!r} matched none")
    return tuple(sorted(files))


def count_examples(files: tuple[str, ...]) -> int:
    """Returns the number of readable records in `files` (reads them once, without parsing).

    A damaged file counts up to its first corrupt record; reading it in training is then an error naming the
    file and record, unless `input_pipeline.skip_corrupt_records` is set.
    """
    files_dataset = tf.data.Dataset.from_tensor_slices(list(files))
    records = files_dataset.interleave(
        lambda path: tf.data.TFRecordDataset(path).ignore_errors(),
        cycle_length=min(len(files), 8),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return int(records.reduce(tf.constant(0, tf.int64), lambda count, _: count + 1).numpy())


def label_histogram(files: tuple[str, ...], max_records: int = _RECORDS_CHECKED) -> np.ndarray:
    """int64 [256]: the label values of the first `max_records` readable records of `files`, counted.

    Unreadable records are passed over: reading them in training is where they are reported.
    """
    spec = {schema.LABEL_ENCODED: schema.FEATURE_SPEC[schema.LABEL_ENCODED]}

    def label(serialized: tf.Tensor) -> tf.Tensor:
        return tf.io.decode_png(tf.io.parse_single_example(serialized, spec)[schema.LABEL_ENCODED], channels=1)

    labels = tf.data.TFRecordDataset(list(files)).ignore_errors().map(label).ignore_errors().take(max_records)
    total = np.zeros(label_stats.NUM_VALUES, np.int64)
    for values in labels:
        total += label_stats.histogram(values.numpy())
    return total


def _check_not_binary_ignored(
    train_pattern: str, train_files: tuple[str, ...], class_names: tuple[str, ...], ignore_label: int
) -> None:
    label_stats.check_not_binary_ignored(
        f"tfrecord_dataset.train_pattern={train_pattern!r} (its first {_RECORDS_CHECKED} records)",
        label_histogram(train_files),
        class_names,
        ignore_label,
        f"If {ignore_label} marks the foreground, re-convert the masks with `python -m trainer.data.convert "
        f"folder --binary` (or --label_map={ignore_label}:1), or write class 1 there yourself.",
    )


@gin.configurable
def tfrecord_dataset(
    train_pattern: str = gin.REQUIRED,
    eval_pattern: str = gin.REQUIRED,
    num_classes: int = gin.REQUIRED,
    class_names: tuple = (),
    ignore_label: int = 255,
    name: str = "tfrecord",
    max_image_size: tuple | None = None,
    image_channels: int = 3,
    image_dtype: str = "uint8",
) -> info_lib.DatasetInfo:
    """Describes a dataset given as glob patterns of TFRecord files (local or gs://).

    Args:
      train_pattern: comma-separated glob patterns of the training files.
      eval_pattern: comma-separated glob patterns of the evaluation files.
      num_classes: number of classes, the background included.
      class_names: one name per class; defaults to `class_0`, `class_1`, ...
      ignore_label: the label value of pixels that losses and metrics skip.
      name: a short name for logs and summaries.
      max_image_size: (height, width) every eval image fits in; required for evaluation unless the input
        pipeline's eval_size is set.
      image_channels: channels of every image (3: RGB).
      image_dtype: pixel type of every image, uint8 or uint16 (records other than RGB uint8 carry
        `image/channels` and `image/dtype`, as the converter writes them).

    Returns:
      The dataset's `DatasetInfo`, with example counts read from the files.

    Raises:
      ValueError: if a pattern matches no file, or the classes are inconsistent.
    """
    train_files = _glob(train_pattern, "tfrecord_dataset.train_pattern")
    eval_files = _glob(eval_pattern, "tfrecord_dataset.eval_pattern")
    if not class_names:
        class_names = tuple(f"class_{i}" for i in range(num_classes))
    _check_not_binary_ignored(train_pattern, train_files, tuple(class_names), ignore_label)
    num_train_examples = count_examples(train_files)
    num_eval_examples = count_examples(eval_files)
    logging.info(
        "TFRecord dataset %r: %d train examples in %d files, %d eval examples in %d files",
        name,
        num_train_examples,
        len(train_files),
        num_eval_examples,
        len(eval_files),
    )
    return info_lib.DatasetInfo(
        name=name,
        num_classes=num_classes,
        class_names=tuple(class_names),
        ignore_label=ignore_label,
        train_files=train_files,
        eval_files=eval_files,
        num_train_examples=num_train_examples,
        num_eval_examples=num_eval_examples,
        max_image_size=tuple(max_image_size) if max_image_size is not None else None,
        image_channels=image_channels,
        image_dtype=image_dtype,
    )


@gin.configurable
def converted_dataset(
    data_dir: str = gin.REQUIRED, train_split: str | None = None, eval_split: str | None = None
) -> info_lib.DatasetInfo:
    """Describes a dataset written by `python -m trainer.data.convert` from its `dataset_info.json`.

    Args:
      data_dir: the converter's --output_dir (local or gs://).
      train_split: train on this split instead of the one the JSON names (e.g. `trainval`).
      eval_split: evaluate on this split instead of the one the JSON names.

    Returns:
      The dataset's `DatasetInfo`, class names, palette and example counts included.

    Raises:
      UserInputError: if there is no dataset_info.json in `data_dir`, or no such split.
    """
    path = os.path.join(data_dir, info_lib.INFO_FILENAME)
    if not tf.io.gfile.exists(path):
        raise UserInputError(
            f"converted_dataset.data_dir: expected a directory written by `python -m trainer.data.convert`, with "
            f"{info_lib.INFO_FILENAME}, received {data_dir!r} which has none"
        )
    info = info_lib.load(path)
    changes = {}
    for binding, role, name in (("train_split", "train", train_split), ("eval_split", "eval", eval_split)):
        if name is None:
            continue
        if not info.splits:
            raise UserInputError(
                f"converted_dataset.{binding}: {path} lists no splits to choose from, received {name!r}"
            )
        split = info.split(name)
        changes[f"{role}_files"] = split.files
        changes[f"num_{role}_examples"] = split.num_examples
        if role == "eval":
            changes["max_image_size"] = split.max_image_size
    if changes:
        info = dataclasses.replace(info, **changes)
    logging.info(
        "Converted dataset %r from %s: %d train and %d eval examples",
        info.name,
        data_dir,
        info.num_train_examples,
        info.num_eval_examples,
    )
    return info
