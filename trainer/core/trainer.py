"""The Trainer: strategy, model, optimizer, loss and EMA → `train(num_steps)`, a dict of loop scalars.

The inner step (`ReplicaStep`, what one replica does with one batch) is separate from the outer host loop (how
many steps run per `tf.function` call); the loop takes its step count as a tensor, so it never retraces.
"""

import contextlib
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras

from trainer.cluster import preemption
from trainer.core import losses
from trainer.core.ema import ExponentialMovingAverage
from trainer.core.train_step import LOSS_TERMS, ReplicaStep, StepOptions
from trainer.data import integrity

HostLoop = Callable[[Iterator, tf.Tensor], dict]


def new_global_step() -> tf.Variable:
    """The int64 step counter every trainer increments once per step (create it inside the strategy's scope)."""
    return tf.Variable(
        0, dtype=tf.int64, trainable=False, name="global_step", aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA
    )


class Trainer:
    """Trains `model` under `strategy`, host loop by host loop.

    `loop(iterator, num_steps)` runs up to `num_steps` steps in one `tf.function` call and stops early after a
    step whose loss or gradient norm is not finite, so the host can name that step. It returns `loss`,
    `cross_entropy`, `l2_regularization`, `gradient_norm` (means over the steps run; the norm is the global one,
    before clipping), `learning_rate` (at the last step), `weight_norm` (after it), `loss_scale` (mixed_float16
    only), and `all_finite`, `nonfinite_step` (global step of the first non-finite step, -1 if none) and `steps`.
    With a `stop_flag` the loop also stops after any step at whose end the flag is True (under MultiWorkerMirrored:
    on any worker, so all stop after the same step) and returns `stopped`.
    With `summary_every` > 0 the loop also records `per_step/<name>` scalars at every step that is a multiple of
    it, into `summary_writer` (`train` calls) or the default writer (direct `loop` calls).
    """

    def __init__(
        self,
        strategy: tf.distribute.Strategy,
        model: keras.Model,
        optimizer: keras.optimizers.Optimizer,
        loss: losses.SegmentationLoss,
        global_step: tf.Variable,
        options: StepOptions,
        *,
        ema: ExponentialMovingAverage | None = None,
        summary_every: int = 0,
        summary_writer: tf.summary.SummaryWriter | None = None,
        batches: Callable[[], Iterator] | None = None,
        train_files: Sequence[str] = (),
        stop_flag: tf.Variable | None = None,
    ):
        self.strategy = strategy
        self.model = model
        self.optimizer = optimizer
        self.global_step = global_step
        self.ema = ema
        self._replica_step = ReplicaStep(model, optimizer, loss, options, global_step, ema)
        self._summary_every = summary_every
        self._summary_writer = summary_writer
        self._make_batches = batches
        self._batches: Iterator | None = None
        self._train_files = tuple(train_files)
        self._stop_flag = stop_flag
        self._stop_needs_agreement = stop_flag is not None and preemption.needs_agreement(strategy)
        self.loop: HostLoop = tf.function(self._host_loop)

    @property
    def step(self) -> int:
        """The global step."""
        return int(self.global_step.numpy())

    def train(self, num_steps: int) -> dict[str, np.ndarray]:
        """Runs one host loop of up to `num_steps` steps on the trainer's batches; returns its scalars (numpy).

        Raises:
          UserInputError: a training record is corrupt or does not match the dataset (names the file).
        """
        if self._batches is None:
            # Made on first use, after any restore, so a resumed run starts its stream at the restored step.
            self._batches = self._make_batches()
        # The per-step summaries (`summary_every`) go to the default writer while the loop runs.
        writing = self._summary_writer.as_default() if self._summary_writer is not None else contextlib.nullcontext()
        try:
            with writing:
                outputs = self.loop(self._batches, tf.constant(num_steps, tf.int32))
        except tf.errors.OpError as error:
            explanation = integrity.explain_input_error(error, self._train_files, "train")
            if explanation is None:
                raise
            raise explanation from error
        return {name: value.numpy() for name, value in outputs.items()}

    def _reduce(self, per_replica: tf.Tensor) -> tuple[tf.Tensor, dict[str, tf.Tensor], tf.Tensor]:
        """Reduces one step's per-replica vectors; returns (loss, loss terms, gradient norm)."""
        scalars = tf.unstack(self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None))
        terms = dict(zip(LOSS_TERMS, scalars[:-1], strict=True))
        return tf.add_n([terms[name] for name in LOSS_TERMS]), terms, scalars[-1]

    def _is_finite(self, step_loss: tf.Tensor, gradient_norm: tf.Tensor) -> tf.Tensor:
        # Under loss scaling an overflowing gradient is expected now and then: the optimizer skips that update
        # and lowers the scale, so only the loss must stay finite.
        finite = tf.math.is_finite(step_loss)
        if not self._replica_step.scales_loss:
            finite = tf.logical_and(finite, tf.math.is_finite(gradient_norm))
        return finite

    def _record_step(self, step_loss: tf.Tensor, terms: dict[str, tf.Tensor], gradient_norm: tf.Tensor) -> None:
        step_scalars = {"loss": step_loss, **terms, "gradient_norm": gradient_norm}
        step_scalars["learning_rate"] = self.optimizer.learning_rate
        # An absolute name scope ("…/"): inside the loop body the tags would otherwise start with "while/".
        recording = tf.equal(self.global_step % self._summary_every, 0)
        with tf.summary.record_if(recording), tf.name_scope("per_step/"):
            for name, value in step_scalars.items():
                tf.summary.scalar(name, value, step=self.global_step)

    def _host_loop(self, iterator: Iterator, num_steps: tf.Tensor) -> dict:
        totals = {name: tf.constant(0.0) for name in ("loss", *LOSS_TERMS, "gradient_norm")}
        all_finite = tf.constant(True)
        nonfinite_step = tf.constant(-1, tf.int64)
        steps = tf.constant(0)
        stopped = tf.constant(False)
        for _ in tf.range(num_steps):
            images, labels = next(iterator)
            per_replica = self.strategy.run(self._replica_step, args=(images, labels))
            step_loss, terms, gradient_norm = self._reduce(per_replica)
            self.global_step.assign_add(1)
            if self._summary_every:
                self._record_step(step_loss, terms, gradient_norm)
            step_values = {"loss": step_loss, **terms, "gradient_norm": gradient_norm}
            totals = {name: totals[name] + step_values[name] for name in totals}
            steps += 1
            if not self._is_finite(step_loss, gradient_norm):
                all_finite = tf.constant(False)
                nonfinite_step = tf.identity(self.global_step.read_value())
                break
            if self._stop_flag is not None and self._stop_requested():
                stopped = tf.constant(True)
                break
        outputs = self._loop_outputs(totals, steps, all_finite, nonfinite_step)
        if self._stop_flag is not None:
            outputs["stopped"] = stopped
        return outputs

    def _stop_requested(self) -> tf.Tensor:
        """Whether to stop after this step: the stop flag, summed over the workers when they must agree."""
        requested = self._stop_flag.read_value()
        if not self._stop_needs_agreement:
            return requested
        votes = self.strategy.run(lambda: tf.cast(requested, tf.float32))
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, votes, axis=None) > 0

    def _loop_outputs(self, totals: dict, steps: tf.Tensor, all_finite: tf.Tensor, nonfinite_step: tf.Tensor) -> dict:
        count = tf.cast(tf.maximum(steps, 1), tf.float32)
        outputs = {name: total / count for name, total in totals.items()}
        outputs["learning_rate"] = tf.identity(self.optimizer.learning_rate)
        outputs["weight_norm"] = tf.linalg.global_norm(self.model.trainable_variables)
        if self._replica_step.scales_loss:
            outputs["loss_scale"] = tf.cast(self.optimizer.loss_scale, tf.float32)
        outputs.update(all_finite=all_finite, nonfinite_step=nonfinite_step, steps=steps)
        return outputs
