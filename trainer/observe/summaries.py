"""TensorBoard writers, what the trainer records in them, and the measurements behind the train scalars.

Besides the loop's own outputs (losses, learning rate, norms), every host loop records:

| tag | what |
|---|---|
| `steps_per_sec`, `examples_per_sec` | wall-clock throughput of the host loop (the first loop includes tracing) |
| `input_wait_fraction` | share of the loop's wall time spent blocked in `next()` on the input iterator |
| `flops_per_sec` | achieved model FLOP/s: examples/sec × training FLOPs per example (3 × the forward pass) |
| `mfu` | model FLOPs utilisation: `flops_per_sec` / (peak FLOP/s per replica × replicas) |
| `host_memory_gib` | resident memory of this process |
| `ema_decay` | the optimizer's EMA momentum, when it keeps an EMA of the weights |
"""

import dataclasses
import functools
import os
import time
from collections.abc import Callable, Iterator, Sequence

import gin
import numpy as np
import psutil
import tensorflow as tf
import tf_keras as keras
from absl import logging
from tensorflow.python.framework import config as tf_config  # is_op_determinism_enabled has no public alias

from trainer.cluster.tasks import TaskInfo
from trainer.common.errors import UserInputError
from trainer.data.info import DatasetInfo
from trainer.data.pipeline import InputPipeline
from trainer.observe import flops, visualize

TRAIN_SUBDIR = "train"
EVAL_SUBDIR = "eval"
EVAL_IMAGES_TAG = "eval_examples"
# Forward + backward (gradients with respect to activations and to weights): the usual 3x of MFU accounting.
TRAIN_FLOPS_PER_FORWARD_FLOP = 3.0
_GIB = 1024**3


@gin.configurable("observe")
@dataclasses.dataclass(frozen=True)
class ObserveConfig:
    """What the trainer records about itself; bound in gin as `observe.<field>`.

    Attributes:
      peak_flops_per_sec: the peak FLOP/s of one replica (one GPU, one TPU core) that `mfu` divides by,
        e.g. 989e12 for an H100 SXM in bf16 (dense). None measures it once, after the first host loop: the
        best rate of a chain of square matmuls in the training's compute dtype on every replica, i.e. what
        this hardware actually reaches on dense matmuls (below the data-sheet figure, so MFU reads higher
        than against it).
      num_eval_images: validation examples shown as image panels at every evaluation (0: none).
      eval_image_max_size: the longer side, in pixels, each panel is shrunk to at most.
    """

    peak_flops_per_sec: float | None = None
    num_eval_images: int = 4
    eval_image_max_size: int = 512

    def __post_init__(self):
        if self.peak_flops_per_sec is not None and not self.peak_flops_per_sec > 0:
            raise UserInputError(
                "gin binding observe.peak_flops_per_sec: expected a positive FLOP/s figure per replica (e.g. 989e12) "
                f"or None to measure it, received {self.peak_flops_per_sec!r}."
            )
        if self.num_eval_images < 0:
            raise UserInputError(
                f"gin binding observe.num_eval_images: expected >= 0, received {self.num_eval_images}."
            )
        if self.eval_image_max_size <= 0:
            raise UserInputError(
                "gin binding observe.eval_image_max_size: expected a positive int, received "
                f"{self.eval_image_max_size}."
            )


class SummaryWriters:
    """One writer per stream under `model_dir`; non-chief tasks get no-op writers so only the chief writes.

    Only the `streams` a job writes get an event file. TensorBoard polls only the newest event file of a
    directory, so an unused one (a training job's `eval/` writer) would hide an evaluation job's events there.
    """

    def __init__(self, model_dir: str, task: TaskInfo, streams: Sequence[str] = (TRAIN_SUBDIR, EVAL_SUBDIR)):
        def writer(stream: str) -> tf.summary.SummaryWriter:
            if task.is_chief and stream in streams:
                return tf.summary.create_file_writer(os.path.join(model_dir, stream))
            return tf.summary.create_noop_writer()

        self.train_dir = os.path.join(model_dir, TRAIN_SUBDIR)
        self.train = writer(TRAIN_SUBDIR)
        self.eval = writer(EVAL_SUBDIR)

    def close(self) -> None:
        """Flushes and closes both writers."""
        self.train.close()
        self.eval.close()


def write_scalars(writer: tf.summary.SummaryWriter, scalars: dict[str, float], step: int) -> None:
    """Writes each `tag: value` as a scalar at `step` and flushes."""
    with writer.as_default(step=step):
        for tag, value in scalars.items():
            tf.summary.scalar(tag, value)
    writer.flush()


def write_text(writer: tf.summary.SummaryWriter, tag: str, text: str, step: int) -> None:
    """Writes `text` (shown as Markdown by TensorBoard) at `step` and flushes."""
    with writer.as_default(step=step):
        tf.summary.text(tag, text)
    writer.flush()


def markdown_code(text: str) -> str:
    """Indents `text` by four spaces, which TensorBoard's Markdown renderer shows verbatim as a code block."""
    return "\n".join("    " + line for line in text.splitlines())


def write_eval_images(
    writer: tf.summary.SummaryWriter,
    logits_fn: "Callable[[tf.Tensor], tf.Tensor] | keras.Model",
    images: np.ndarray,
    labels: np.ndarray,
    info: DatasetInfo,
    step: int,
    config: ObserveConfig | None = None,
) -> None:
    """Writes one image per validation example: input | ground truth | prediction | prediction over input.

    Each example has its own tag (`eval_examples/0`, `eval_examples/1`, ...), so TensorBoard's step slider
    shows how that example's prediction evolves; a text summary names the panels and the class colours.

    Args:
      writer: the eval writer (a no-op writer on non-chief tasks).
      logits_fn: a keras model (run with training=False) or a callable images -> logits [N, H, W, C].
      images: float32 [N, H, W, 3] in [-1, 1], the same examples at every evaluation
        (`visualize.fixed_eval_examples`).
      labels: int32 [N, H, W].
      info: the dataset (class names, palette, ignore label).
      step: the global step.
    """
    config = config or ObserveConfig()
    predictions = visualize.predict_classes(logits_fn, images)
    panels = visualize.eval_panels(images, labels, predictions, info, max_size=config.eval_image_max_size)
    with writer.as_default(step=step):
        for index, panel in enumerate(panels):
            tf.summary.image(f"{EVAL_IMAGES_TAG}/{index}", panel[np.newaxis], max_outputs=1)
        tf.summary.text(f"{EVAL_IMAGES_TAG}/legend", _legend_markdown(info))
    writer.flush()


def _legend_markdown(info: DatasetInfo) -> str:
    palette = visualize.dataset_palette(info)
    lines = [f"Panels, left to right: {', '.join(visualize.EVAL_PANELS)}.", "", "| class | id | colour (RGB) |"]
    lines.append("|---|---|---|")
    lines += [f"| {name} | {i} | {tuple(int(c) for c in palette[i])} |" for i, name in enumerate(info.class_names)]
    lines.append(f"| ignored ({info.ignore_label}) | | {visualize.IGNORE_COLOR} |")
    return "\n".join(lines)


class EvalImages:
    """The fixed validation examples shown at every evaluation, read once on first use, and their writer."""

    def __init__(self, input_pipeline: InputPipeline, info: DatasetInfo, config: ObserveConfig | None = None):
        self._input_pipeline = input_pipeline
        self._info = info
        self._config = config or ObserveConfig()
        self._examples: tuple[np.ndarray, np.ndarray] | None = None

    def write(
        self, writer: tf.summary.SummaryWriter, logits_fn: "Callable[[tf.Tensor], tf.Tensor] | keras.Model", step: int
    ) -> None:
        """Writes the panels of `logits_fn`'s predictions at `step` (nothing if `observe.num_eval_images` is 0)."""
        if self._config.num_eval_images == 0:
            return
        if self._examples is None:
            self._examples = visualize.fixed_eval_examples(
                self._input_pipeline, self._info, self._config.num_eval_images
            )
        write_eval_images(writer, logits_fn, *self._examples, self._info, step, self._config)


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


def forward_flops(model: keras.Model, height: int, width: int) -> float:
    """Returns the FLOPs of one forward pass of `model` on a height×width image (the dense count of `flops`)."""
    return flops.forward_flops_per_image(model, height, width).total


def measure_peak_flops_per_replica(
    strategy: tf.distribute.Strategy,
    dtype: tf.DType = tf.float32,
    size: int | None = None,
    chain: int = 8,
    repeats: int = 5,
) -> float:
    """Measures one replica's dense-matmul FLOP/s: the best of `repeats` runs of `chain` size×size matmuls.

    Every replica runs the chain at once (as in training, where replicas share hosts and links); the rate is
    per replica. `size` defaults to 4096 on accelerators and 512 on CPUs (a few hundredths of a second there).
    """
    device_type = tf.DeviceSpec.from_string(strategy.extended.worker_devices[0]).device_type or "CPU"
    size = size or (512 if device_type.upper() == "CPU" else 4096)

    def replica_chain(value: tf.Tensor) -> tf.Tensor:
        # The value comes in as an argument so that grappler cannot fold the chain into a constant.
        product = tf.fill([size, size], tf.cast(value, dtype))
        weights = tf.fill([size, size], tf.cast(1.0 / size, dtype))
        for _ in range(chain):
            product = tf.matmul(product, weights)
        return tf.cast(product[0, 0], tf.float32)

    @tf.function
    def run_chain(value: tf.Tensor) -> list[tf.Tensor]:
        # Local results only: no collective, so each worker of a cluster can measure on its own.
        return strategy.experimental_local_results(strategy.run(replica_chain, args=(value,)))

    value = tf.constant(1.0)
    [result.numpy() for result in run_chain(value)]  # trace, compile and warm up
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        [result.numpy() for result in run_chain(value)]
        best = min(best, time.perf_counter() - started)
    return 2.0 * size**3 * chain / best


def host_memory_gib() -> float:
    """Resident set size of this process, in GiB."""
    return psutil.Process().memory_info().rss / _GIB


def ema_decay(optimizer: keras.optimizers.Optimizer | None) -> float | None:
    """The decay (momentum) of the optimizer's weight EMA, or None when it keeps none."""
    if optimizer is None or not getattr(optimizer, "use_ema", False):
        return None
    return float(optimizer.ema_momentum)


class TrainMonitor:
    """Measures, per host loop, what the loop's own outputs cannot: throughput, input wait, FLOP/s, MFU, memory.

    The FLOPs per example and the peak rate are found once, lazily at the end of the first loop (between
    loops, so no loop's timing includes them).
    """

    def __init__(
        self,
        strategy: tf.distribute.Strategy,
        model: keras.Model,
        optimizer: keras.optimizers.Optimizer | None,
        global_batch_size: int,
        crop_size: Sequence[int],
        config: ObserveConfig | None = None,
    ):
        self._strategy = strategy
        self._model = model
        self._optimizer = optimizer
        self._global_batch_size = global_batch_size
        self._crop_size = tuple(crop_size)
        self._config = config or ObserveConfig()
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
        flops = TRAIN_FLOPS_PER_FORWARD_FLOP * forward_flops(self._model, *self._crop_size)
        logging.info("Training FLOPs per example (3 x forward pass): %.3f GFLOPs.", flops / 1e9)
        return flops

    @functools.cached_property
    def peak_flops_per_replica(self) -> float:
        """The MFU denominator per replica: `observe.peak_flops_per_sec`, or measured once."""
        if self._config.peak_flops_per_sec:
            return float(self._config.peak_flops_per_sec)
        dtype = tf.as_dtype(keras.mixed_precision.global_policy().compute_dtype)
        peak = measure_peak_flops_per_replica(self._strategy, dtype)
        logging.info(
            "Measured peak %s matmul rate: %.2f TFLOP/s per replica (the MFU denominator; bind "
            "observe.peak_flops_per_sec to use the data-sheet figure instead).",
            dtype.name,
            peak / 1e12,
        )
        return peak

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
        peak = self.peak_flops_per_replica * self._strategy.num_replicas_in_sync
        scalars = {
            "steps_per_sec": steps_per_sec,
            "examples_per_sec": examples_per_sec,
            "flops_per_sec": flops_per_sec,
            "mfu": flops_per_sec / peak,
            "host_memory_gib": host_memory_gib(),
        }
        if self._input_wait is not None:
            scalars["input_wait_fraction"] = min(1.0, self._input_wait.take_seconds() / elapsed_seconds)
        decay = ema_decay(self._optimizer)
        if decay is not None:
            scalars["ema_decay"] = decay
        return scalars


def parse_profile_steps(value: "str | Sequence[str | int] | None") -> tuple[int, int] | None:
    """Parses `--profile_steps=START,END` into (START, END); None or empty means no profiling.

    Raises:
      UserInputError: unless it is two integers with 0 <= START < END.
    """
    if value is None or (isinstance(value, str | list | tuple) and not value):
        return None
    parts = value.split(",") if isinstance(value, str) else list(value)
    try:
        start, end = (int(str(part).strip()) for part in parts)
    except ValueError:
        start = end = None
    if start is None or not 0 <= start < end:
        text = value if isinstance(value, str) else ",".join(str(part) for part in value)
        raise UserInputError(
            f"--profile_steps={text}: expected START,END, two global steps with 0 <= START < END "
            "(e.g. --profile_steps=100,110), received something else."
        )
    return start, end


class ProfileWindow:
    """Captures a TensorBoard profiler trace of the training steps START to END (`--profile_steps`).

    The profiler can only start and stop between host loops (one `tf.function` call runs
    `train.steps_per_loop` steps), so the window is rounded out to loop boundaries: the trace starts before the
    loop that runs step START and stops after the first loop that reaches step END. With
    `train.steps_per_loop=50` and `--profile_steps=120,130` it covers steps 100 to 150. An evaluation that falls
    inside the window is traced too. The trace goes to `<logdir>/plugins/profile/<time>/`, where TensorBoard's
    Profile tab (`pip install tensorboard-plugin-profile`) finds it. Only the chief traces.
    """

    def __init__(self, steps: tuple[int, int] | None, logdir: str, enabled: bool = True):
        self._steps = steps if enabled else None
        self._logdir = logdir
        self._active = False
        self._done = steps is None

    def before_loop(self, start_step: int, num_steps: int) -> None:
        """Starts the trace if the loop about to run steps [start_step, start_step + num_steps) reaches START."""
        if self._steps is None or self._active or self._done:
            return
        start, end = self._steps
        if start_step + num_steps > start and start_step < end:
            logging.info(
                "Profiling from step %d (--profile_steps=%d,%d) into %s.", start_step, start, end, self._logdir
            )
            tf.profiler.experimental.start(self._logdir)
            self._active = True

    def after_loop(self, end_step: int) -> None:
        """Stops the trace once the loop that just ended reached END."""
        if self._active and end_step >= self._steps[1]:
            self.stop()

    def stop(self) -> None:
        """Stops and writes the trace if one is running (also called when the run ends inside the window)."""
        if self._active:
            tf.profiler.experimental.stop()
            self._active = False
            self._done = True
            logging.info("Profiler trace written under %s/plugins/profile.", self._logdir)
