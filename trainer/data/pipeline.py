"""`InputPipeline`: the gin-bound settings of the train and eval `tf.data` pipelines, and their builders.

The datasets are per replica, for `strategy.distribute_datasets_from_function`: `train_input` builds the
training stream (resumable at any step, see there), `eval_input` the eval one.
"""

import dataclasses
import os
from collections.abc import Callable

import gin
import tensorflow as tf

from trainer.common import validate
from trainer.common.errors import UserInputError, expected
from trainer.data import augment, eval_input, records, train_input
from trainer.data.info import DatasetInfo
from trainer.data.jitter import PhotometricJitter

__all__ = ["InputPipeline", "PhotometricJitter"]

_PREFIX = "input_pipeline"


def _checked_pad_value(pad_value: float | tuple[float, ...]) -> float | tuple[float, ...]:
    """Returns `pad_value` (a list made a tuple of floats) if it is one value or three in [-1, 1]."""
    if isinstance(pad_value, (list, tuple)):
        pad_value = tuple(float(v) for v in pad_value)
    pad_values = pad_value if isinstance(pad_value, tuple) else (pad_value,)
    if len(pad_values) not in (1, 3) or not all(-1 <= v <= 1 for v in pad_values):
        raise expected(
            f"{_PREFIX}.pad_value", "one value or three (one per channel) in the model's input range [-1, 1]", pad_value
        )
    return pad_value


def _check_service_address(address: str | None) -> None:
    if address is not None and (not address.startswith("grpc://") or len(address) <= len("grpc://")):
        raise expected(f"{_PREFIX}.tf_data_service_address", "the dispatcher's 'grpc://host:port'", address)


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
      channel_mean: per-channel mean pixel values (in the images' own units, e.g. 0-65535 for uint16) to
        normalise with, (x - mean) / std, instead of the default: RGB uint8 to [-1, 1], other images by the
        dataset's statistics (`dataset_info.json`). Needs `channel_std`.
      channel_std: per-channel standard deviations, with `channel_mean`.
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
    channel_mean: tuple[float, ...] | None = None
    channel_std: tuple[float, ...] | None = None

    def __post_init__(self):
        if (self.channel_mean is None) != (self.channel_std is None):
            raise UserInputError(
                f"{_PREFIX}.channel_mean and {_PREFIX}.channel_std: expected both or neither, received "
                f"{self.channel_mean!r} and {self.channel_std!r}"
            )
        if self.channel_std is not None and not all(isinstance(v, int | float) and v > 0 for v in self.channel_std):
            raise UserInputError(f"{_PREFIX}.channel_std: expected positive numbers, received {self.channel_std!r}")
        object.__setattr__(self, "crop_size", validate.size_pair(f"{_PREFIX}.crop_size", self.crop_size))
        if self.eval_size is not None:
            object.__setattr__(self, "eval_size", validate.size_pair(f"{_PREFIX}.eval_size", self.eval_size))
        object.__setattr__(self, "pad_value", _checked_pad_value(self.pad_value))
        augment.check_scales(_PREFIX, self.min_scale, self.max_scale, self.scale_step)
        for binding in ("shuffle_buffer", "interleave_cycle_length", "prefetch_batches"):
            validate.positive_int(f"{_PREFIX}.{binding}", getattr(self, binding))
        for binding in ("num_parallel_calls", "autotune_ram_budget_mb"):
            if getattr(self, binding) is not None:
                validate.positive_int(f"{_PREFIX}.{binding}", getattr(self, binding))
        validate.non_negative_int(f"{_PREFIX}.private_threadpool_size", self.private_threadpool_size)
        if self.autotune_ram_budget_mb is not None and not self.autotune:
            raise UserInputError(
                f"{_PREFIX}.autotune_ram_budget_mb: only used with {_PREFIX}.autotune = True, which is "
                f"False; received {self.autotune_ram_budget_mb}"
            )
        _check_service_address(self.tf_data_service_address)

    def normalizer(self, info: DatasetInfo) -> Callable[[tf.Tensor], tf.Tensor]:
        """`pixels -> model input` for `info`'s images (see `records.pixel_normalizer`)."""
        return records.pixel_normalizer(info, self.channel_mean, self.channel_std)

    @property
    def parallel_calls(self) -> int:
        """Records decoded and augmented in parallel: the setting, else tf.data's autotuning or one per core."""
        if self.num_parallel_calls is not None:
            return self.num_parallel_calls
        return tf.data.AUTOTUNE if self.autotune else (os.cpu_count() or 1)

    def tf_data_options(self) -> tf.data.Options:
        """The `tf.data.Options` of both datasets: autotuning, threads, determinism, no auto-sharding."""
        options = tf.data.Options()
        options.autotune.enabled = self.autotune
        if self.autotune_ram_budget_mb is not None:
            options.autotune.ram_budget = self.autotune_ram_budget_mb * 2**20
        if self.private_threadpool_size:
            options.threading.private_threadpool_size = self.private_threadpool_size
        # The pipelines shard themselves (files or elements); auto-sharding on top would drop data.
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        options.deterministic = True
        return options

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
        return train_input.train_dataset(self, info, global_batch_size, input_context, start_step)

    def eval_steps(self, info: DatasetInfo, global_batch_size: int) -> int:
        """Returns the number of global batches that cover every eval example once (the last one padded)."""
        return eval_input.eval_steps(info, global_batch_size)

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
        return eval_input.eval_dataset(self, info, global_batch_size, input_context)
