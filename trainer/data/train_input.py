"""The training stream of an `InputPipeline`: endless epochs of shuffled, augmented batches, resumable at any step.

The stream is a function of (seed, input pipeline, step) only. It is built epoch by epoch: epoch e reads this
pipeline's files in an order drawn from (seed, e), rotates their records by an offset drawn from (seed, e) and
shuffles them in windows of `shuffle_buffer` with permutations drawn from (seed, e, window); each record's
augmentation is seeded by (seed, e, its position in the epoch). A run resumed at step s therefore starts at
epoch `s * batch // examples_per_epoch` without reading the epochs before it, and skips the remaining records
of that epoch undecoded: it sees exactly the batches an uninterrupted run sees.
"""

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import tensorflow as tf
from absl import logging

from trainer.common import validate
from trainer.common.errors import UserInputError
from trainer.data import augment, records, sharding
from trainer.data.info import DatasetInfo

if TYPE_CHECKING:
    from trainer.data.pipeline import InputPipeline

# The epochs of a training stream: effectively endless.
_MAX_EPOCHS = 2**62

EpochRecords = Callable[[tf.Tensor], tf.data.Dataset]


def epoch_reader(pipeline: "InputPipeline", shard: sharding.TrainShard) -> EpochRecords:
    """Returns `epoch -> dataset of (epoch, position, serialized record)`: one epoch of this pipeline's shard."""
    files = list(shard.files)
    order_seed = tf.constant([pipeline.seed, shard.pipeline_id], tf.int64)
    cycle_length = min(len(files), pipeline.interleave_cycle_length)
    parallel = pipeline.parallel_calls
    parallel_reads = parallel if parallel == tf.data.AUTOTUNE else min(parallel, cycle_length)
    read_file = records.file_reader(pipeline.skip_corrupt_records)

    def read(ordered_files: tf.data.Dataset) -> tf.data.Dataset:
        shard_records = ordered_files.interleave(
            read_file, cycle_length=cycle_length, num_parallel_calls=parallel_reads, deterministic=True
        )
        if not shard.by_file:
            # Too few files for one per pipeline: every pipeline reads all and keeps every n-th record.
            shard_records = shard_records.shard(shard.num_pipelines, shard.pipeline_id)
        return shard_records

    cached = read(tf.data.Dataset.from_tensor_slices(files)).cache() if pipeline.cache else None
    file_names = tf.constant(files)

    def one_epoch(epoch: tf.Tensor) -> tf.data.Dataset:
        epoch_seed = tf.random.experimental.stateless_fold_in(order_seed, epoch)
        file_seed, rotation_seed, window_seed = tf.unstack(tf.random.experimental.stateless_split(epoch_seed, num=3))
        if cached is not None:
            stream = cached
        else:
            order = tf.random.experimental.stateless_shuffle(tf.range(len(files)), file_seed)
            stream = read(tf.data.Dataset.from_tensor_slices(tf.gather(file_names, order)))
        # Rotating the epoch by a random offset moves the window boundaries: records that shared a window
        # in one epoch mostly do not in the next (the offset's records are read twice, at most one window).
        offset = tf.random.stateless_uniform([], rotation_seed, 0, pipeline.shuffle_buffer, dtype=tf.int64)
        stream = stream.skip(offset).concatenate(stream.take(offset))

        def permute(index: tf.Tensor, window: tf.Tensor) -> tf.Tensor:
            seed = tf.random.experimental.stateless_fold_in(window_seed, index)
            return tf.gather(window, tf.random.experimental.stateless_shuffle(tf.range(tf.shape(window)[0]), seed))

        # Permuting windows (not tf.data's shuffle buffer) keeps the order a function of (seed, epoch):
        # Dataset.shuffle cannot take a seed computed in the graph under every global seed.
        stream = stream.batch(pipeline.shuffle_buffer).enumerate().map(permute).unbatch()
        return stream.enumerate().map(lambda position, record: (epoch, position, record))

    return one_epoch


def resume_position(
    read_epoch: EpochRecords,
    shard: sharding.TrainShard,
    info: DatasetInfo,
    start_step: int,
    batch_size: int,
    whole_epochs: bool = False,
) -> tuple[int, int]:
    """Returns (the epoch holding step `start_step`, the records of that epoch to skip before it).

    Args:
      whole_epochs: resume at the start of that epoch (nothing to skip), as the tf.data service must: its
        workers share out whole epochs.

    Raises:
      UserInputError: if this pipeline's shard holds no records.
    """
    # One pass over this pipeline's records (no decoding) counts an epoch: earlier epochs are never read.
    examples_per_epoch = int(read_epoch(tf.constant(0, tf.int64)).reduce(np.int64(0), lambda n, _: n + 1))
    if not examples_per_epoch:
        raise UserInputError(
            f"Dataset {info.name!r}: input pipeline {shard.pipeline_id} of {shard.num_pipelines} has no training "
            f"records in its files {list(shard.files)}; expected at least one"
        )
    first_epoch, skip_records = divmod(start_step * batch_size, examples_per_epoch)
    if whole_epochs:
        skip_records = 0
    logging.info(
        "Train input pipeline %d resumes at step %d: epoch %d (of %d examples), skipping %d records",
        shard.pipeline_id,
        start_step,
        first_epoch,
        examples_per_epoch,
        skip_records,
    )
    return first_epoch, skip_records


def augmentation(
    pipeline: "InputPipeline", info: DatasetInfo, pipeline_id: int
) -> Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]:
    """Returns `(epoch, position, serialized) -> (image, label)`: the record decoded, augmented and cropped."""
    # Augmentation seeds depend on (seed, pipeline, epoch, position) only, never on thread scheduling.
    augment_seed = tf.constant([pipeline.seed, pipeline_id + 2**31], tf.int64)
    height, width = pipeline.crop_size
    if pipeline.photometric_jitter is not None and not records.is_rgb_uint8(info):
        raise UserInputError(
            f"input_pipeline.photometric_jitter: expected None for dataset {info.name!r}, whose images have "
            f"{info.image_channels} channel(s) of {info.image_dtype}: brightness, contrast, saturation and hue are "
            "defined here for RGB uint8 images in [-1, 1] only. Remove the binding."
        )
    normalize = pipeline.normalizer(info)

    def preprocess(epoch: tf.Tensor, position: tf.Tensor, serialized: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        image, label, _ = records.parse_and_check(serialized, info, normalize)
        element_seed = tf.random.experimental.stateless_fold_in(
            tf.random.experimental.stateless_fold_in(augment_seed, epoch), position
        )
        scale_seed, crop_seed, flip_seed, colour_seed = tf.unstack(
            tf.random.experimental.stateless_split(element_seed, num=4)
        )
        image, label = augment.random_scale(
            image, label, scale_seed, pipeline.min_scale, pipeline.max_scale, pipeline.scale_step
        )
        image, label = augment.pad_to_size(image, label, height, width, info.ignore_label, pipeline.pad_value)
        image, label = augment.random_crop(image, label, crop_seed, height, width)
        if pipeline.flip:
            image, label = augment.random_horizontal_flip(image, label, flip_seed)
        if pipeline.photometric_jitter is not None:
            image = pipeline.photometric_jitter(image, colour_seed)
        return image, tf.cast(label, tf.int32)

    return preprocess


def _served(pipeline: "InputPipeline", dataset: tf.data.Dataset) -> tf.data.Dataset:
    """Moves the decoding and augmentation of `dataset` to the workers of the tf.data service."""
    return dataset.with_options(pipeline.tf_data_options()).apply(
        tf.data.experimental.service.distribute(
            processing_mode=tf.data.experimental.service.ShardingPolicy.DYNAMIC,
            service=pipeline.tf_data_service_address,
            job_name=pipeline.tf_data_service_job_name,
        )
    )


def train_dataset(
    pipeline: "InputPipeline",
    info: DatasetInfo,
    global_batch_size: int,
    input_context: tf.distribute.InputContext | None = None,
    start_step: int = 0,
) -> tf.data.Dataset:
    """`InputPipeline.train_dataset`: this pipeline's training batches from step `start_step` on."""
    batch_size = sharding.per_replica_batch_size("train.global_batch_size", global_batch_size, input_context)
    validate.non_negative_int("train_dataset.start_step", start_step)
    use_service = pipeline.tf_data_service_address is not None
    # With the tf.data service its workers share out the epochs; every trainer reads the same job.
    num_pipelines, pipeline_id = (1, 0) if use_service else sharding.pipeline_placement(input_context)
    shard = sharding.train_shard(info.train_files, pipeline.seed, num_pipelines, pipeline_id)
    logging.info(
        "Train input pipeline %d of %d: sharding by %s (%d files)%s",
        pipeline_id,
        num_pipelines,
        "file" if shard.by_file else "element",
        len(shard.files),
        f", tf.data service at {pipeline.tf_data_service_address}" if use_service else "",
    )
    records.report_corrupt_files(shard.files, "train", pipeline.skip_corrupt_records)
    read_epoch = epoch_reader(pipeline, shard)
    first_epoch, skip_records = 0, 0
    if start_step:
        first_epoch, skip_records = resume_position(
            read_epoch, shard, info, start_step, batch_size, whole_epochs=use_service
        )
    dataset = tf.data.Dataset.range(first_epoch, _MAX_EPOCHS).flat_map(read_epoch)
    if skip_records:
        dataset = dataset.skip(skip_records)
    preprocess = augmentation(pipeline, info, pipeline_id)
    dataset = dataset.map(preprocess, num_parallel_calls=pipeline.parallel_calls, deterministic=True)
    dataset = dataset.batch(batch_size, drop_remainder=True)
    if use_service:
        dataset = _served(pipeline, dataset)
    return dataset.prefetch(pipeline.prefetch_batches).with_options(pipeline.tf_data_options())
