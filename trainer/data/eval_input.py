"""The eval stream of an `InputPipeline`: every example once, padded to one size, split evenly over pipelines."""

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import tensorflow as tf

from trainer.common.errors import UserInputError, expected
from trainer.data import augment, records, schema, sharding
from trainer.data.info import DatasetInfo

if TYPE_CHECKING:
    from trainer.data.pipeline import InputPipeline


def eval_steps(info: DatasetInfo, global_batch_size: int) -> int:
    """Returns the number of global batches that cover every eval example once (the last one padded)."""
    return math.ceil(info.num_eval_examples / global_batch_size)


def eval_size(pipeline: "InputPipeline", info: DatasetInfo) -> tuple[int, int]:
    """Returns the (height, width) every eval image is padded to: the pipeline's, else the dataset's largest.

    Raises:
      UserInputError: if neither is known.
    """
    size = pipeline.eval_size or info.max_image_size
    if size is None:
        raise UserInputError(
            f"input_pipeline.eval_size: expected (height, width) since dataset {info.name!r} has no "
            "max_image_size, received None"
        )
    return size


def _padded(
    pipeline: "InputPipeline", info: DatasetInfo, height: int, width: int
) -> Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor]]:
    """Returns `serialized -> (image, label)`: the record decoded and padded to height x width."""

    normalize = pipeline.normalizer(info)

    def preprocess(serialized: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        image, label, filename = records.parse_and_check(serialized, info, normalize)
        size = tf.shape(image)[:2]
        check = schema.check_record(
            tf.logical_and(size[0] <= height, size[1] <= width),
            lambda: [
                "Record ",
                filename,
                f": expected an eval image of at most {height}x{width} (input_pipeline.eval_size), received ",
                schema.format_size(size),
            ],
        )
        with tf.control_dependencies([check]):
            image, label = augment.pad_to_size(image, label, height, width, info.ignore_label, pipeline.pad_value)
        image = tf.ensure_shape(image, [height, width, info.image_channels])
        label = tf.ensure_shape(tf.cast(label, tf.int32), [height, width])
        return image, label

    return preprocess


def _all_padding(
    pad_value: float | tuple[float, ...], ignore_label: int, height: int, width: int, channels: int = 3
) -> tf.data.Dataset:
    """Returns endless examples of padding only: the image all `pad_value`, the label all ignored."""
    pad_values = pad_value if isinstance(pad_value, tuple) else (pad_value,) * channels
    return tf.data.Dataset.from_tensors(
        (
            tf.broadcast_to(tf.constant(pad_values, tf.float32), [height, width, channels]),
            tf.fill([height, width], tf.constant(ignore_label, tf.int32)),
        )
    ).repeat()


def eval_dataset(
    pipeline: "InputPipeline",
    info: DatasetInfo,
    global_batch_size: int,
    input_context: tf.distribute.InputContext | None = None,
) -> tf.data.Dataset:
    """`InputPipeline.eval_dataset`: this pipeline's share of every eval example once, then all-ignore padding."""
    batch_size = sharding.per_replica_batch_size("evaluation.global_batch_size", global_batch_size, input_context)
    num_pipelines, pipeline_id = sharding.pipeline_placement(input_context)
    height, width = eval_size(pipeline, info)
    if global_batch_size % num_pipelines:
        raise expected(
            "evaluation.global_batch_size",
            f"a multiple of the number of input pipelines ({num_pipelines})",
            global_batch_size,
        )
    examples_per_pipeline = eval_steps(info, global_batch_size) * global_batch_size // num_pipelines
    # Files in sorted order read one after another: the element order, hence the shards, are fixed.
    records.report_corrupt_files(info.eval_files, "eval", pipeline.skip_corrupt_records)
    dataset = tf.data.Dataset.from_tensor_slices(sorted(info.eval_files))
    dataset = dataset.flat_map(records.file_reader(pipeline.skip_corrupt_records)).shard(num_pipelines, pipeline_id)
    dataset = dataset.map(
        _padded(pipeline, info, height, width), num_parallel_calls=pipeline.parallel_calls, deterministic=True
    )
    padding = _all_padding(pipeline.pad_value, info.ignore_label, height, width, info.image_channels)
    dataset = dataset.concatenate(padding).take(examples_per_pipeline)
    dataset = dataset.batch(batch_size, drop_remainder=True)
    return dataset.prefetch(pipeline.prefetch_batches).with_options(pipeline.tf_data_options())
