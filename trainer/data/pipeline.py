"""`InputPipeline`: per-replica train and eval `tf.data` pipelines for `distribute_datasets_from_function`."""

import dataclasses
import math
import os

import gin
import numpy as np
import tensorflow as tf
from absl import logging

from trainer.config import ConfigError
from trainer.data import augment, schema
from trainer.data.info import DatasetInfo

# One parallel call per core decodes and augments as fast as autotuning did on this 2-core machine (the model
# step, not the input, is the bottleneck); two batches in flight hide the input latency behind each step.
_PARALLEL_CALLS = os.cpu_count() or 1
_PREFETCH_BATCHES = 2
# Fixed (not AUTOTUNE) so the interleaved record order is the same on every machine.
_INTERLEAVE_CYCLE_LENGTH = 8


def _pipeline_placement(input_context: tf.distribute.InputContext | None) -> tuple[int, int]:
    """Returns (num_input_pipelines, input_pipeline_id); one pipeline without a context."""
    if input_context is None:
        return 1, 0
    return input_context.num_input_pipelines, input_context.input_pipeline_id


def _per_replica_batch_size(
    global_batch_size: int, input_context: tf.distribute.InputContext | None, binding: str
) -> int:
    if global_batch_size <= 0:
        raise ConfigError(f"{binding}: expected a positive int, received {global_batch_size}")
    if input_context is None:
        return global_batch_size
    num_replicas = input_context.num_replicas_in_sync
    if global_batch_size % num_replicas:
        raise ConfigError(
            f"{binding}: expected a multiple of the {num_replicas} replicas in sync, received {global_batch_size}"
        )
    return input_context.get_per_replica_batch_size(global_batch_size)


def _distribute_options() -> tf.data.Options:
    options = tf.data.Options()
    # No autotuning: its model thread sleeps for up to a minute between optimisation rounds, and destroying an
    # iterator waits for it (measured: 48 s at the end of the quickstart run, 0.2 s without it). Parallelism is
    # set explicitly instead (_PARALLEL_CALLS, _PREFETCH_BATCHES).
    options.autotune.enabled = False
    # The pipelines shard themselves (files or elements, see below); auto-sharding on top would drop data.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    options.deterministic = True
    return options


def _parse_and_check(serialized: tf.Tensor, info: DatasetInfo) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
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
        image = tf.cast(image, tf.float32) / 127.5 - 1.0
    return image, label, filename


@gin.configurable("input_pipeline")
@dataclasses.dataclass(frozen=True)
class InputPipeline:
    """Builds the per-replica datasets of a `DatasetInfo`.

    Images come out float32 in [-1, 1]; padding is 0 there (mid-grey) with ignore-labelled pixels under it.

    Attributes:
      crop_size: (height, width) of training crops.
      min_scale: smallest random rescaling factor at training.
      max_scale: largest random rescaling factor at training.
      flip: whether to mirror training examples left-right at random.
      shuffle_buffer: examples in the shuffle buffer of each training pipeline.
      seed: seeds the file order, the shuffle and every augmentation.
      eval_size: (height, width) every eval image is padded to; defaults to the dataset's max_image_size.
    """

    crop_size: tuple[int, int] = (96, 96)
    min_scale: float = 0.75
    max_scale: float = 1.25
    flip: bool = True
    shuffle_buffer: int = 256
    seed: int = 0
    eval_size: tuple[int, int] | None = None

    def __post_init__(self):
        object.__setattr__(self, "crop_size", tuple(int(v) for v in self.crop_size))
        if self.eval_size is not None:
            object.__setattr__(self, "eval_size", tuple(int(v) for v in self.eval_size))
        if len(self.crop_size) != 2 or min(self.crop_size) <= 0:
            raise ConfigError(
                f"input_pipeline.crop_size: expected (height, width) of positive ints, received {self.crop_size}"
            )
        if not 0 < self.min_scale <= self.max_scale:
            raise ConfigError(
                "input_pipeline.min_scale/max_scale: expected 0 < min_scale <= max_scale, received "
                f"{self.min_scale}, {self.max_scale}"
            )
        if self.shuffle_buffer <= 0:
            raise ConfigError(f"input_pipeline.shuffle_buffer: expected a positive int, received {self.shuffle_buffer}")
        if self.eval_size is not None and (len(self.eval_size) != 2 or min(self.eval_size) <= 0):
            raise ConfigError(
                f"input_pipeline.eval_size: expected (height, width) of positive ints, received {self.eval_size}"
            )

    def train_dataset(
        self,
        info: DatasetInfo,
        global_batch_size: int,
        input_context: tf.distribute.InputContext | None = None,
    ) -> tf.data.Dataset:
        """Returns this pipeline's endless, shuffled, augmented training batches.

        Args:
          info: the dataset.
          global_batch_size: the batch summed over all replicas.
          input_context: from `strategy.distribute_datasets_from_function`; None for a single pipeline.

        Returns:
          Batches `(images float32 [b, h, w, 3], labels int32 [b, h, w])` of the per-replica batch size b and
          the crop size (h, w), all static.

        Raises:
          ValueError: if the global batch size is not a multiple of the replicas in sync.
        """
        batch_size = _per_replica_batch_size(global_batch_size, input_context, "train.global_batch_size")
        num_pipelines, pipeline_id = _pipeline_placement(input_context)
        # Every pipeline computes the same permutation, so their file shards are disjoint and cover all files.
        files = [str(f) for f in np.random.default_rng(self.seed).permutation(sorted(info.train_files))]
        shard_by_file = len(files) >= num_pipelines
        if shard_by_file:
            files = files[pipeline_id::num_pipelines]
        logging.info(
            "Train input pipeline %d of %d: sharding by %s (%d files)",
            pipeline_id,
            num_pipelines,
            "file" if shard_by_file else "element",
            len(files),
        )
        dataset = tf.data.Dataset.from_tensor_slices(files)
        # Reshuffled every epoch (the repeat below re-iterates it): epochs differ beyond the record shuffle.
        dataset = dataset.shuffle(len(files), seed=self.seed, reshuffle_each_iteration=True)
        cycle_length = min(len(files), _INTERLEAVE_CYCLE_LENGTH)
        dataset = dataset.interleave(
            tf.data.TFRecordDataset,
            cycle_length=cycle_length,
            num_parallel_calls=min(_PARALLEL_CALLS, cycle_length),
            deterministic=True,
        )
        if not shard_by_file:
            # Too few files for one per pipeline: every pipeline reads all and keeps every n-th record.
            dataset = dataset.shard(num_pipelines, pipeline_id)
        dataset = dataset.shuffle(self.shuffle_buffer, seed=self.seed, reshuffle_each_iteration=True)
        dataset = dataset.repeat().enumerate()
        # Augmentation seeds depend on (seed, pipeline, element index) only, never on thread scheduling.
        base_seed = tf.constant([self.seed, pipeline_id], dtype=tf.int64)

        def preprocess(index: tf.Tensor, serialized: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            image, label, _ = _parse_and_check(serialized, info)
            element_seed = tf.random.experimental.stateless_fold_in(base_seed, index)
            scale_seed, crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(element_seed, num=3))
            image, label = augment.random_scale(image, label, scale_seed, self.min_scale, self.max_scale)
            height, width = self.crop_size
            image, label = augment.pad_to_size(image, label, height, width, info.ignore_label)
            image, label = augment.random_crop(image, label, crop_seed, height, width)
            if self.flip:
                image, label = augment.random_horizontal_flip(image, label, flip_seed)
            return image, tf.cast(label, tf.int32)

        dataset = dataset.map(preprocess, num_parallel_calls=_PARALLEL_CALLS, deterministic=True)
        dataset = dataset.batch(batch_size, drop_remainder=True)
        return dataset.prefetch(_PREFETCH_BATCHES).with_options(_distribute_options())

    def eval_steps(self, info: DatasetInfo, global_batch_size: int) -> int:
        """Returns the number of global batches that cover every eval example once (the last one padded)."""
        return math.ceil(info.num_eval_examples / global_batch_size)

    def eval_dataset(
        self,
        info: DatasetInfo,
        global_batch_size: int,
        input_context: tf.distribute.InputContext | None = None,
    ) -> tf.data.Dataset:
        """Returns this pipeline's eval batches: its share of every example once, then all-ignore padding.

        Every pipeline yields exactly `eval_steps * global_batch_size / num_input_pipelines` examples, so all
        workers run the same number of steps (none waits forever for a batch that never comes).

        Returns:
          Batches `(images float32 [b, H, W, 3], labels int32 [b, H, W])`, (H, W) the eval size, all static.

        Raises:
          ValueError: if no eval size is known, or the batch does not split evenly over replicas or
            pipelines.
        """
        batch_size = _per_replica_batch_size(global_batch_size, input_context, "evaluation.global_batch_size")
        num_pipelines, pipeline_id = _pipeline_placement(input_context)
        eval_size = self.eval_size or info.max_image_size
        if eval_size is None:
            raise ConfigError(
                f"input_pipeline.eval_size: expected (height, width) since dataset {info.name!r} has no "
                "max_image_size, received None"
            )
        if global_batch_size % num_pipelines:
            raise ConfigError(
                f"evaluation.global_batch_size: expected a multiple of the {num_pipelines} input pipelines, "
                f"received {global_batch_size}"
            )
        examples_per_pipeline = self.eval_steps(info, global_batch_size) * global_batch_size // num_pipelines
        height, width = eval_size

        def preprocess(serialized: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            image, label, filename = _parse_and_check(serialized, info)
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
                image, label = augment.pad_to_size(image, label, height, width, info.ignore_label)
            image = tf.ensure_shape(image, [height, width, 3])
            label = tf.ensure_shape(tf.cast(label, tf.int32), [height, width])
            return image, label

        # Files in sorted order read one after another: the element order, hence the shards, are fixed.
        dataset = tf.data.TFRecordDataset(sorted(info.eval_files))
        dataset = dataset.shard(num_pipelines, pipeline_id)
        dataset = dataset.map(preprocess, num_parallel_calls=_PARALLEL_CALLS, deterministic=True)
        padding = tf.data.Dataset.from_tensors(
            (
                tf.zeros([height, width, 3], tf.float32),
                tf.fill([height, width], tf.constant(info.ignore_label, tf.int32)),
            )
        ).repeat()
        dataset = dataset.concatenate(padding).take(examples_per_pipeline)
        dataset = dataset.batch(batch_size, drop_remainder=True)
        return dataset.prefetch(_PREFETCH_BATCHES).with_options(_distribute_options())
