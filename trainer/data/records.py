"""Reading the records of a split: TFRecord files (past damaged ones on request) parsed and checked."""

from collections.abc import Callable, Sequence

import tensorflow as tf
from absl import logging

from trainer.common.images import to_unit_range
from trainer.data import integrity, schema
from trainer.data.info import DatasetInfo


def file_reader(skip_corrupt_records: bool) -> Callable[[tf.Tensor], tf.data.Dataset]:
    """Returns `path -> dataset of its serialized records`, read up to the first corrupt one if asked."""

    def read(path: tf.Tensor) -> tf.data.Dataset:
        records = tf.data.TFRecordDataset(path)
        return records.ignore_errors() if skip_corrupt_records else records

    return read


def report_corrupt_files(files: Sequence[str], split: str, skip_corrupt_records: bool) -> None:
    """With `skip_corrupt_records`, scans `files` once and logs what the pipeline will skip."""
    if not skip_corrupt_records:
        return
    damaged = integrity.find_corrupt_records(files)
    if damaged:
        logging.warning(
            "input_pipeline.skip_corrupt_records: %d of %d %s files are damaged; reading each up to its first "
            "corrupt record:\n  %s",
            len(damaged),
            len(files),
            split,
            "\n  ".join(f"{record.describe()}, {record.readable_records} records kept" for record in damaged),
        )
    else:
        logging.info("input_pipeline.skip_corrupt_records: no damaged %s file among %d.", split, len(files))


def parse_and_check(serialized: tf.Tensor, info: DatasetInfo) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Parses a record into (image float32 in [-1, 1], label uint8, filename), checking the label values."""
    image, label, filename = schema.parse_example(serialized)
    label_ids = tf.cast(label, tf.int32)
    valid = tf.logical_or(label_ids < info.num_classes, tf.equal(label_ids, info.ignore_label))

    def message() -> list:
        found = tf.unique(tf.boolean_mask(label_ids, tf.logical_not(valid))).y
        return [
            "Record ",
            filename,
            f": expected label values in [0, {info.num_classes}) or the ignore label {info.ignore_label}, received ",
            tf.strings.reduce_join(tf.strings.as_string(found[:8]), separator=", "),
        ]

    # A bad label would silently index out of range in the loss (NaN on GPU), so fail here, loudly.
    check = schema.check_record(tf.reduce_all(valid), message)
    with tf.control_dependencies([check]):
        image = to_unit_range(image)
    return image, label, filename
