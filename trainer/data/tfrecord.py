"""A dataset of TFRecord files in the segmentation schema of `trainer.data.schema`, e.g. PASCAL VOC."""

import gin
import tensorflow as tf
from absl import logging

from trainer.config import ConfigError
from trainer.data import info as info_lib
from trainer.data import integrity


def _glob(patterns: str, binding: str) -> tuple[str, ...]:
    """Expands comma-separated glob patterns into a sorted, de-duplicated file list."""
    files: set[str] = set()
    for pattern in (p.strip() for p in patterns.split(",")):
        if pattern:
            files.update(tf.io.gfile.glob(pattern))
    if not files:
        raise ConfigError(f"{binding}: expected the pattern to match at least one file, {patterns!r} matched none")
    return tuple(sorted(files))


def count_examples(files: tuple[str, ...]) -> int:
    """Returns the number of records in `files` (reads them once, without parsing)."""
    dataset = tf.data.TFRecordDataset(list(files), num_parallel_reads=tf.data.AUTOTUNE)
    try:
        return int(dataset.reduce(tf.constant(0, tf.int64), lambda count, _: count + 1).numpy())
    except tf.errors.DataLossError as error:
        raise integrity.explain_input_error(error, files, "dataset") from error


@gin.configurable
def tfrecord_dataset(
    train_pattern: str = gin.REQUIRED,
    eval_pattern: str = gin.REQUIRED,
    num_classes: int = gin.REQUIRED,
    class_names: tuple = (),
    ignore_label: int = 255,
    name: str = "tfrecord",
    max_image_size: tuple | None = None,
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

    Returns:
      The dataset's `DatasetInfo`, with example counts read from the files.

    Raises:
      ValueError: if a pattern matches no file, or the classes are inconsistent.
    """
    train_files = _glob(train_pattern, "tfrecord_dataset.train_pattern")
    eval_files = _glob(eval_pattern, "tfrecord_dataset.eval_pattern")
    if not class_names:
        class_names = tuple(f"class_{i}" for i in range(num_classes))
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
    )
