"""`InputPipeline`: per-replica train and eval `tf.data` pipelines for `distribute_datasets_from_function`.

The training stream is a function of (seed, input pipeline, step) only. It is built epoch by epoch: epoch e
reads this pipeline's files in an order drawn from (seed, e), rotates their records by an offset drawn from
(seed, e) and shuffles them in windows of `shuffle_buffer` with permutations drawn from (seed, e, window);
each record's augmentation is seeded by (seed, e, its position in the epoch). A run resumed at step s
therefore starts at epoch `s * batch // examples_per_epoch` without reading the epochs before it, and skips
the remaining records of that epoch undecoded (`train_dataset(start_step=s)`): it sees exactly the batches
an uninterrupted run sees.
"""

import dataclasses
import math
import os
from collections.abc import Sequence

import gin
import numpy as np
import tensorflow as tf
from absl import logging

from trainer.common.errors import UserInputError
from trainer.data import augment, integrity, schema
from trainer.data.info import DatasetInfo

# The epochs of a training stream: effectively endless.
_MAX_EPOCHS = 2**62


def _pipeline_placement(input_context: tf.distribute.InputContext | None) -> tuple[int, int]:
    """Returns (num_input_pipelines, input_pipeline_id); one pipeline without a context."""
    if input_context is None:
        return 1, 0
    return input_context.num_input_pipelines, input_context.input_pipeline_id


def _per_replica_batch_size(
    global_batch_size: int, input_context: tf.distribute.InputContext | None, binding: str
) -> int:
    if global_batch_size <= 0:
        raise UserInputError(f"{binding}: expected a positive int, received {global_batch_size}")
    if input_context is None:
        return global_batch_size
    num_replicas = input_context.num_replicas_in_sync
    if global_batch_size % num_replicas:
        raise UserInputError(
            f"{binding}: expected a multiple of the {num_replicas} replicas in sync, received {global_batch_size}"
        )
    return input_context.get_per_replica_batch_size(global_batch_size)


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


def _check_range(binding: str, value: tuple, lowest: float) -> None:
    if len(value) != 2 or not lowest <= value[0] <= value[1] or (value[0] == value[1] and value[0] != 1):
        raise UserInputError(
            f"photometric_jitter.{binding}: expected (lower, upper) with {lowest} <= lower < upper, or (1, 1) to "
            f"leave it unchanged, received {value}"
        )


@gin.configurable("photometric_jitter")
@dataclasses.dataclass(frozen=True)
class PhotometricJitter:
    """Random colour changes of training images (`input_pipeline.photometric_jitter = @photometric_jitter()`).

    The defaults are mmsegmentation's PhotoMetricDistortion: brightness +-32/255, contrast and saturation
    x[0.5, 1.5], hue +-18 degrees.

    Attributes:
      brightness_delta: the largest brightness shift, as a fraction of the full range; 0 disables it.
      contrast_range: (lower, upper) contrast factors; (1, 1) disables it.
      saturation_range: (lower, upper) saturation factors; (1, 1) disables it.
      hue_delta: the largest hue rotation as a fraction of the colour wheel, in [0, 0.5]; 0 disables it.
    """

    brightness_delta: float = 32 / 255
    contrast_range: tuple[float, float] = (0.5, 1.5)
    saturation_range: tuple[float, float] = (0.5, 1.5)
    hue_delta: float = 18 / 360

    def __post_init__(self):
        object.__setattr__(self, "contrast_range", tuple(float(v) for v in self.contrast_range))
        object.__setattr__(self, "saturation_range", tuple(float(v) for v in self.saturation_range))
        if not 0 <= self.brightness_delta <= 1:
            raise UserInputError(
                f"photometric_jitter.brightness_delta: expected a value in [0, 1], received {self.brightness_delta}"
            )
        _check_range("contrast_range", self.contrast_range, 0.0)
        _check_range("saturation_range", self.saturation_range, 0.0)
        if not 0 <= self.hue_delta <= 0.5:
            raise UserInputError(
                f"photometric_jitter.hue_delta: expected a value in [0, 0.5], received {self.hue_delta}"
            )

    def __call__(self, image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        return augment.photometric_jitter(
            image, seed, self.brightness_delta, self.contrast_range, self.saturation_range, self.hue_delta
        )


@gin.configurable("input_pipeline")
@dataclasses.dataclass(frozen=True)
class InputPipeline:
    """Builds the per-replica datasets of a `DatasetInfo`.

    Images come out float32 in [-1, 1]; padding is `pad_value` there with ignore-labelled pixels under it.

    Attributes:
      crop_size: (height, width) of training crops.
      min_scale: smallest random rescaling factor at training.
      max_scale: largest random rescaling factor at training.
      scale_step: 0 draws the factor uniformly in [min_scale, max_scale]; a positive step draws it among
        min_scale, min_scale + step, ... (DeepLab: 0.25 over [0.5, 2.0]).
      flip: whether to mirror training examples left-right at random.
      pad_value: the image padding in the model's input space [-1, 1], one value or one per channel. 0 is
        mid-grey, i.e. DeepLab's mean pixel 127.5; a dataset's mean pixel m (0-255) is m / 127.5 - 1, e.g.
        (-0.030, -0.088, -0.188) for ImageNet's.
      photometric_jitter: random colour changes of training images, or None.
      shuffle_buffer: records shuffled together (per window); at least the examples per pipeline and epoch
        gives a full reshuffle every epoch (records are held in memory, still encoded).
      seed: seeds the file order, the shuffle and every augmentation.
      eval_size: (height, width) every eval image is padded to; defaults to the dataset's max_image_size.
      cache: keep this pipeline's training records in memory after reading them once (still encoded);
        the file order is then fixed and only the windows are reshuffled, so raise shuffle_buffer with it.
      interleave_cycle_length: training files read at once.
      num_parallel_calls: records decoded and augmented in parallel; None is one per CPU core (or
        tf.data's autotuning with `autotune`).
      prefetch_batches: batches prepared ahead of the training step.
      private_threadpool_size: threads of a pool of the pipeline's own (0: TensorFlow's shared pool).
      autotune: let tf.data tune buffers and parallelism. Off by default: its model thread sleeps up to a
        minute between rounds, and destroying an iterator waits for it (measured: 48 s at the end of the
        quickstart run, 0.2 s without it); the explicit settings above match it on this input.
      autotune_ram_budget_mb: with `autotune`, the memory tf.data's buffers may take; None is its default
        (half the machine's memory).
      tf_data_service_address: `grpc://host:port` of a tf.data service dispatcher to decode and augment on
        its workers (for input-bound jobs), or None. Its workers share out whole epochs, so the batch order
        then depends on which worker answers first, and a resumed run restarts at an epoch boundary.
      tf_data_service_job_name: the job every trainer input pipeline reads from, so that each batch goes to
        one of them.
      skip_corrupt_records: read past damaged TFRecord files instead of stopping: each damaged file is read up
        to its first corrupt record (the records after it cannot be located), and the files, records and
        losses are counted and logged when the pipeline is built. Off by default: a corrupt file is an error
        that names the file and record.
    """

    crop_size: tuple[int, int] = (96, 96)
    min_scale: float = 0.75
    max_scale: float = 1.25
    scale_step: float = 0.0
    flip: bool = True
    pad_value: float | tuple[float, float, float] = 0.0
    photometric_jitter: PhotometricJitter | None = None
    shuffle_buffer: int = 256
    seed: int = 0
    eval_size: tuple[int, int] | None = None
    cache: bool = False
    interleave_cycle_length: int = 8
    num_parallel_calls: int | None = None
    prefetch_batches: int = 2
    private_threadpool_size: int = 0
    autotune: bool = False
    autotune_ram_budget_mb: int | None = None
    tf_data_service_address: str | None = None
    tf_data_service_job_name: str = "deeplab_trainer"
    skip_corrupt_records: bool = False

    def __post_init__(self):
        object.__setattr__(self, "crop_size", tuple(int(v) for v in self.crop_size))
        if self.eval_size is not None:
            object.__setattr__(self, "eval_size", tuple(int(v) for v in self.eval_size))
        if isinstance(self.pad_value, (list, tuple)):
            object.__setattr__(self, "pad_value", tuple(float(v) for v in self.pad_value))
        if len(self.crop_size) != 2 or min(self.crop_size) <= 0:
            raise UserInputError(
                f"input_pipeline.crop_size: expected (height, width) of positive ints, received {self.crop_size}"
            )
        if not 0 < self.min_scale <= self.max_scale:
            raise UserInputError(
                "input_pipeline.min_scale/max_scale: expected 0 < min_scale <= max_scale, received "
                f"{self.min_scale}, {self.max_scale}"
            )
        if self.scale_step < 0:
            raise UserInputError(
                f"input_pipeline.scale_step: expected 0 or a positive step, received {self.scale_step}"
            )
        pad_values = self.pad_value if isinstance(self.pad_value, tuple) else (self.pad_value,)
        if len(pad_values) not in (1, 3) or not all(-1 <= v <= 1 for v in pad_values):
            raise UserInputError(
                "input_pipeline.pad_value: expected one value or three (one per channel) in the model's input range "
                f"[-1, 1], received {self.pad_value}"
            )
        for binding in ("shuffle_buffer", "interleave_cycle_length", "prefetch_batches"):
            value = getattr(self, binding)
            if value <= 0:
                raise UserInputError(f"input_pipeline.{binding}: expected a positive int, received {value}")
        for binding in ("num_parallel_calls", "autotune_ram_budget_mb"):
            value = getattr(self, binding)
            if value is not None and value <= 0:
                raise UserInputError(f"input_pipeline.{binding}: expected None or a positive int, received {value}")
        if self.private_threadpool_size < 0:
            raise UserInputError(
                "input_pipeline.private_threadpool_size: expected 0 (the shared pool) or a positive int, "
                f"received {self.private_threadpool_size}"
            )
        if self.autotune_ram_budget_mb is not None and not self.autotune:
            raise UserInputError(
                "input_pipeline.autotune_ram_budget_mb: only used with input_pipeline.autotune = True, which is "
                f"False; received {self.autotune_ram_budget_mb}"
            )
        if self.eval_size is not None and (len(self.eval_size) != 2 or min(self.eval_size) <= 0):
            raise UserInputError(
                f"input_pipeline.eval_size: expected (height, width) of positive ints, received {self.eval_size}"
            )
        address = self.tf_data_service_address
        if address is not None and (not address.startswith("grpc://") or len(address) <= len("grpc://")):
            raise UserInputError(
                "input_pipeline.tf_data_service_address: expected the dispatcher's 'grpc://host:port', received "
                f"{address!r}"
            )

    @property
    def _parallel_calls(self) -> int:
        if self.num_parallel_calls is not None:
            return self.num_parallel_calls
        return tf.data.AUTOTUNE if self.autotune else (os.cpu_count() or 1)

    def _options(self) -> tf.data.Options:
        options = tf.data.Options()
        options.autotune.enabled = self.autotune
        if self.autotune_ram_budget_mb is not None:
            options.autotune.ram_budget = self.autotune_ram_budget_mb * 2**20
        if self.private_threadpool_size:
            options.threading.private_threadpool_size = self.private_threadpool_size
        # The pipelines shard themselves (files or elements, see below); auto-sharding on top would drop data.
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        options.deterministic = True
        return options

    def _read_file(self, path: tf.Tensor) -> tf.data.Dataset:
        records = tf.data.TFRecordDataset(path)
        return records.ignore_errors() if self.skip_corrupt_records else records

    def _report_corrupt_files(self, files: Sequence[str], split: str) -> None:
        """With skip_corrupt_records, scans `files` once and logs what the pipeline will skip."""
        if not self.skip_corrupt_records:
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

    def _epoch_records(self, files: list[str], num_pipelines: int, pipeline_id: int, shard_by_file: bool):
        """Returns `epoch -> dataset of (epoch, position, serialized record)`: one epoch of this pipeline."""
        order_seed = tf.constant([self.seed, pipeline_id], tf.int64)
        cycle_length = min(len(files), self.interleave_cycle_length)
        parallel = self._parallel_calls
        parallel_reads = parallel if parallel == tf.data.AUTOTUNE else min(parallel, cycle_length)

        def read(ordered_files: tf.data.Dataset) -> tf.data.Dataset:
            records = ordered_files.interleave(
                self._read_file,
                cycle_length=cycle_length,
                num_parallel_calls=parallel_reads,
                deterministic=True,
            )
            if not shard_by_file:
                # Too few files for one per pipeline: every pipeline reads all and keeps every n-th record.
                records = records.shard(num_pipelines, pipeline_id)
            return records

        cached = read(tf.data.Dataset.from_tensor_slices(files)).cache() if self.cache else None
        file_names = tf.constant(files)

        def epoch_records(epoch: tf.Tensor) -> tf.data.Dataset:
            epoch_seed = tf.random.experimental.stateless_fold_in(order_seed, epoch)
            file_seed, rotation_seed, window_seed = tf.unstack(
                tf.random.experimental.stateless_split(epoch_seed, num=3)
            )
            if cached is not None:
                records = cached
            else:
                order = tf.random.experimental.stateless_shuffle(tf.range(len(files)), file_seed)
                records = read(tf.data.Dataset.from_tensor_slices(tf.gather(file_names, order)))
            # Rotating the epoch by a random offset moves the window boundaries: records that shared a window
            # in one epoch mostly do not in the next (the offset's records are read twice, at most one window).
            offset = tf.random.stateless_uniform([], rotation_seed, 0, self.shuffle_buffer, dtype=tf.int64)
            records = records.skip(offset).concatenate(records.take(offset))

            def permute(index: tf.Tensor, window: tf.Tensor) -> tf.Tensor:
                seed = tf.random.experimental.stateless_fold_in(window_seed, index)
                return tf.gather(window, tf.random.experimental.stateless_shuffle(tf.range(tf.shape(window)[0]), seed))

            # Permuting windows (not tf.data's shuffle buffer) keeps the order a function of (seed, epoch):
            # Dataset.shuffle cannot take a seed computed in the graph under every global seed.
            records = records.batch(self.shuffle_buffer).enumerate().map(permute).unbatch()
            return records.enumerate().map(lambda position, record: (epoch, position, record))

        return epoch_records

    def train_dataset(
        self,
        info: DatasetInfo,
        global_batch_size: int,
        input_context: tf.distribute.InputContext | None = None,
        start_step: int = 0,
    ) -> tf.data.Dataset:
        """Returns this pipeline's endless, shuffled, augmented training batches from step `start_step` on.

        Args:
          info: the dataset.
          global_batch_size: the batch summed over all replicas.
          input_context: from `strategy.distribute_datasets_from_function`; None for a single pipeline.
          start_step: the global step of the first batch: a run resumed at step s passes s and gets the
            batches an uninterrupted run gets from step s on (reading, not decoding, at most two epochs of
            records), provided the seed, the global batch and the number of input pipelines are the same.

        Returns:
          Batches `(images float32 [b, h, w, 3], labels int32 [b, h, w])` of the per-replica batch size b and
          the crop size (h, w), all static.

        Raises:
          UserInputError: if the global batch size is not a multiple of the replicas in sync, or start_step < 0.
        """
        batch_size = _per_replica_batch_size(global_batch_size, input_context, "train.global_batch_size")
        if start_step < 0:
            raise UserInputError(f"train_dataset: expected start_step >= 0, received {start_step}")
        use_service = self.tf_data_service_address is not None
        # With the tf.data service its workers share out the epochs; every trainer reads the same job.
        num_pipelines, pipeline_id = (1, 0) if use_service else _pipeline_placement(input_context)
        # Every pipeline computes the same permutation, so their file shards are disjoint and cover all files.
        files = [str(f) for f in np.random.default_rng(self.seed).permutation(sorted(info.train_files))]
        shard_by_file = len(files) >= num_pipelines
        if shard_by_file:
            files = files[pipeline_id::num_pipelines]
        logging.info(
            "Train input pipeline %d of %d: sharding by %s (%d files)%s",
            pipeline_id,
            num_pipelines,
            "file" if shard_by_file else "element",
            len(files),
            f", tf.data service at {self.tf_data_service_address}" if use_service else "",
        )
        self._report_corrupt_files(files, "train")
        epoch_records = self._epoch_records(files, num_pipelines, pipeline_id, shard_by_file)
        first_epoch, skip_records = 0, 0
        if start_step:
            # One pass over this pipeline's records (no decoding) counts an epoch: earlier epochs are never read.
            examples_per_epoch = int(epoch_records(tf.constant(0, tf.int64)).reduce(np.int64(0), lambda n, _: n + 1))
            if not examples_per_epoch:
                raise UserInputError(
                    f"Dataset {info.name!r}: input pipeline {pipeline_id} of {num_pipelines} has no training records "
                    f"in its files {files}; expected at least one"
                )
            first_epoch, skip_records = divmod(start_step * batch_size, examples_per_epoch)
            if use_service:
                skip_records = 0
            logging.info(
                "Train input pipeline %d resumes at step %d: epoch %d (of %d examples), skipping %d records",
                pipeline_id,
                start_step,
                first_epoch,
                examples_per_epoch,
                skip_records,
            )
        dataset = tf.data.Dataset.range(first_epoch, _MAX_EPOCHS).flat_map(epoch_records)
        if skip_records:
            dataset = dataset.skip(skip_records)
        # Augmentation seeds depend on (seed, pipeline, epoch, position) only, never on thread scheduling.
        augment_seed = tf.constant([self.seed, pipeline_id + 2**31], tf.int64)
        height, width = self.crop_size

        def preprocess(epoch: tf.Tensor, position: tf.Tensor, serialized: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            image, label, _ = _parse_and_check(serialized, info)
            element_seed = tf.random.experimental.stateless_fold_in(
                tf.random.experimental.stateless_fold_in(augment_seed, epoch), position
            )
            scale_seed, crop_seed, flip_seed, colour_seed = tf.unstack(
                tf.random.experimental.stateless_split(element_seed, num=4)
            )
            image, label = augment.random_scale(
                image, label, scale_seed, self.min_scale, self.max_scale, self.scale_step
            )
            image, label = augment.pad_to_size(image, label, height, width, info.ignore_label, self.pad_value)
            image, label = augment.random_crop(image, label, crop_seed, height, width)
            if self.flip:
                image, label = augment.random_horizontal_flip(image, label, flip_seed)
            if self.photometric_jitter is not None:
                image = self.photometric_jitter(image, colour_seed)
            return image, tf.cast(label, tf.int32)

        dataset = dataset.map(preprocess, num_parallel_calls=self._parallel_calls, deterministic=True)
        dataset = dataset.batch(batch_size, drop_remainder=True)
        if use_service:
            dataset = dataset.with_options(self._options()).apply(
                tf.data.experimental.service.distribute(
                    processing_mode=tf.data.experimental.service.ShardingPolicy.DYNAMIC,
                    service=self.tf_data_service_address,
                    job_name=self.tf_data_service_job_name,
                )
            )
        return dataset.prefetch(self.prefetch_batches).with_options(self._options())

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
        workers run the same number of steps (none waits forever for a batch that never comes). The labels
        keep their original resolution: images are padded (with `pad_value`), never resized.

        Returns:
          Batches `(images float32 [b, H, W, 3], labels int32 [b, H, W])`, (H, W) the eval size, all static.

        Raises:
          UserInputError: if no eval size is known, or the batch does not split evenly over replicas or
            pipelines.
        """
        batch_size = _per_replica_batch_size(global_batch_size, input_context, "evaluation.global_batch_size")
        num_pipelines, pipeline_id = _pipeline_placement(input_context)
        eval_size = self.eval_size or info.max_image_size
        if eval_size is None:
            raise UserInputError(
                f"input_pipeline.eval_size: expected (height, width) since dataset {info.name!r} has no "
                "max_image_size, received None"
            )
        if global_batch_size % num_pipelines:
            raise UserInputError(
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
                image, label = augment.pad_to_size(image, label, height, width, info.ignore_label, self.pad_value)
            image = tf.ensure_shape(image, [height, width, 3])
            label = tf.ensure_shape(tf.cast(label, tf.int32), [height, width])
            return image, label

        # Files in sorted order read one after another: the element order, hence the shards, are fixed.
        self._report_corrupt_files(info.eval_files, "eval")
        dataset = tf.data.Dataset.from_tensor_slices(sorted(info.eval_files)).flat_map(self._read_file)
        dataset = dataset.shard(num_pipelines, pipeline_id)
        dataset = dataset.map(preprocess, num_parallel_calls=self._parallel_calls, deterministic=True)
        pad_value = self.pad_value if isinstance(self.pad_value, tuple) else (self.pad_value,) * 3
        padding = tf.data.Dataset.from_tensors(
            (
                tf.broadcast_to(tf.constant(pad_value, tf.float32), [height, width, 3]),
                tf.fill([height, width], tf.constant(info.ignore_label, tf.int32)),
            )
        ).repeat()
        dataset = dataset.concatenate(padding).take(examples_per_pipeline)
        dataset = dataset.batch(batch_size, drop_remainder=True)
        return dataset.prefetch(self.prefetch_batches).with_options(self._options())
