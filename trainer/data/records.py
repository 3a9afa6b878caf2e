"""Reading the records of a split: TFRecord files (past damaged ones on request) parsed and checked."""

from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf
from absl import logging

from trainer.common.errors import UserInputError
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


def is_rgb_uint8(info: DatasetInfo) -> bool:
    return info.image_channels == 3 and info.image_dtype == "uint8"


def pixel_normalizer(
    info: DatasetInfo, channel_mean: tuple[float, ...] | None = None, channel_std: tuple[float, ...] | None = None
) -> Callable[[tf.Tensor], tf.Tensor]:
    """Returns `pixels -> float32 model input`, one rule per dataset.

    Given `channel_mean` and `channel_std` (gin, in pixel units): (x - mean) / std per channel. Otherwise RGB
    uint8 images go to [-1, 1] as always; other images use the dataset's per-channel statistics (the
    converter's), or without them their pixel type's range mapped to [-1, 1].
    """
    if channel_mean is None and is_rgb_uint8(info):
        return to_unit_range
    if channel_mean is None and info.channel_mean is not None:
        channel_mean, channel_std = info.channel_mean, info.channel_std
    if channel_mean is None:
        half_range = (np.iinfo(info.image_dtype).max) / 2.0
        return lambda pixels: tf.cast(pixels, tf.float32) / half_range - 1.0
    if len(channel_mean) != info.image_channels or len(channel_std) != info.image_channels:
        raise UserInputError(
            f"input_pipeline.channel_mean and channel_std: expected {info.image_channels} values each (one per "
            f"channel of dataset {info.name!r}), received {channel_mean} and {channel_std}"
        )
    mean = tf.constant(channel_mean, tf.float32)
    scale = 1.0 / tf.maximum(tf.constant(channel_std, tf.float32), 1e-6)
    return lambda pixels: (tf.cast(pixels, tf.float32) - mean) * scale


def parse_and_check(
    serialized: tf.Tensor, info: DatasetInfo, normalize: Callable[[tf.Tensor], tf.Tensor] | None = None
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Parses a record into (image float32, label uint8, filename), checking the label values.

    The image is `normalize`d (`pixel_normalizer`); None maps RGB uint8 to [-1, 1].
    """
    image, label, filename = schema.parse_example(serialized, info.image_channels, info.image_dtype)
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
        image = (normalize or to_unit_range)(image)
    return image, label, filename
