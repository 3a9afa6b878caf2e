"""What a host loop's own outputs cannot tell: throughput, input wait, achieved FLOP/s, MFU and host memory."""

import functools
from collections.abc import Iterator, Sequence

import psutil
import tensorflow as tf
import tf_keras as keras
from absl import logging
from tensorflow.python.framework import config as tf_config  # is_op_determinism_enabled has no public alias

from trainer.observe import flops, peak
from trainer.observe.config import ObserveConfig

_GIB = 1024**3


class InputWaitTimer:
    """Wraps a distributed iterator and adds up the time the train loop spends blocked in `next()` on it.

    The train loop calls `next(iterator)` inside its `tf.function` once per step. This wrapper's `__next__` is
    what that call reaches while the loop is traced, so it puts the timing into the compiled loop itself: a
    `tf.timestamp()` before the iterator's get-next op, one after the batch is available, and the difference
    added to a host variable. The loop runs its steps one after the other (each step's stateful ops finish
    before the next step's start), so the interval is the time the step waited for the input pipeline; with
    batches prefetched in time it is a few microseconds. This is how TensorFlow's profiler defines input time
    (host time in the iterator's get-next op). On GPUs, whose kernels run asynchronously to the host, the
    interval can include device work still queued from the previous step, so it is an upper bound there.
    Measuring costs two timestamps and one host-variable update per step; nothing is sampled or skipped.
    """

    def __init__(self, iterator: Iterator):
        self._iterator = iterator
        with tf.device("CPU:0"):
            self._seconds = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="input_wait_seconds")

    def __iter__(self) -> "InputWaitTimer":
        return self

    def __next__(self):
        started = tf.timestamp()
        with tf.control_dependencies([started]):
            batch = next(self._iterator)
        with tf.control_dependencies(tf.nest.flatten(batch, expand_composites=True)):
            waited = tf.timestamp() - started
        self._seconds.assign_add(waited)
        return batch

    def get_next(self):
        """Same as `next(timer)`, for loops that call `iterator.get_next()`."""
        return next(self)

    @property
    def element_spec(self):
        return self._iterator.element_spec

    def take_seconds(self) -> float:
        """Returns the seconds spent waiting since the last call, and restarts the count."""
        seconds = float(self._seconds.numpy())
        self._seconds.assign(0.0)
        return seconds


def host_memory_gib() -> float:
    """Resident set size of this process, in GiB."""
    return psutil.Process().memory_info().rss / _GIB


class TrainMonitor:
    """Measures, per host loop, what the loop's own outputs cannot: throughput, input wait, FLOP/s, MFU, memory.

    The FLOPs per example and the peak rate are found once, lazily at the end of the first loop (between
    loops, so no loop's timing includes them). The peak is `peak.matmul_chain_peak` per replica, in the model's
    compute dtype: the measurement `make bench` divides by too.
    """

    def __init__(
        self,
        strategy: tf.distribute.Strategy,
        model: keras.Model,
        global_batch_size: int,
        crop_size: Sequence[int],
        config: ObserveConfig,
    ):
        self._strategy = strategy
        self._model = model
        self._global_batch_size = global_batch_size
        self._crop_size = tuple(crop_size)
        self._config = config
        self._input_wait: InputWaitTimer | None = None

    def timed(self, iterator: Iterator) -> Iterator:
        """Returns `iterator` wrapped so the loops it feeds report their input wait; pass this to the loop.

        Under op determinism (`train.deterministic`) TensorFlow forbids timestamps in graphs, so the iterator is
        returned as is and `input_wait_fraction` is not reported.
        """
        if tf_config.is_op_determinism_enabled():
            return iterator
        self._input_wait = InputWaitTimer(iterator)
        return self._input_wait

    @functools.cached_property
    def flops_per_example(self) -> float:
        """Training FLOPs of one example at the crop size."""
        forward = flops.forward_flops_per_image(self._model, *self._crop_size).total
        training = flops.TRAIN_FLOPS_PER_FORWARD_FLOP * forward
        logging.info("Training FLOPs per example (3 x forward pass): %.3f GFLOPs.", training / 1e9)
        return training

    @functools.cached_property
    def peak_flops_per_replica(self) -> float:
        """The MFU denominator per replica: `observe.peak_flops_per_sec`, or measured once."""
        if self._config.peak_flops_per_sec:
            return float(self._config.peak_flops_per_sec)
        # The model keeps the dtype policy it was built under (the global policy is restored after building).
        dtype = tf.as_dtype(self._model.compute_dtype)
        measured = peak.matmul_chain_peak(dtype, size=self._config.peak_matmul_size, strategy=self._strategy)
        logging.info(
            "Measured peak %s matmul rate: %.2f TFLOP/s per replica (%d chained %dx%d matmuls; the MFU denominator; "
            "bind observe.peak_flops_per_sec to use the data-sheet figure instead).",
            measured.dtype,
            measured.flops_per_second / 1e12,
            measured.chain,
            measured.size,
            measured.size,
        )
        return measured.flops_per_second

    def describe(self) -> dict[str, float | str]:
        """The constants behind `flops_per_sec` and `mfu` (for the run summary)."""
        return {
            "train_flops_per_example": self.flops_per_example,
            "peak_flops_per_sec_per_replica": self.peak_flops_per_replica,
            "peak_source": "observe.peak_flops_per_sec" if self._config.peak_flops_per_sec else "measured",
        }

    def loop_scalars(self, num_steps: int, elapsed_seconds: float) -> dict[str, float]:
        """Returns the scalars of a host loop of `num_steps` steps that took `elapsed_seconds` of wall time."""
        steps_per_sec = num_steps / elapsed_seconds
        examples_per_sec = steps_per_sec * self._global_batch_size
        flops_per_sec = examples_per_sec * self.flops_per_example
        peak_flops_per_sec = self.peak_flops_per_replica * self._strategy.num_replicas_in_sync
        scalars = {
            "steps_per_sec": steps_per_sec,
            "examples_per_sec": examples_per_sec,
            "flops_per_sec": flops_per_sec,
            "mfu": flops_per_sec / peak_flops_per_sec,
            "host_memory_gib": host_memory_gib(),
        }
        if self._input_wait is not None:
            scalars["input_wait_fraction"] = min(1.0, self._input_wait.take_seconds() / elapsed_seconds)
        return scalars
