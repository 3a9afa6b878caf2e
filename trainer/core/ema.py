"""Exponential moving average (EMA) of a model's weights, for evaluation and export.

One float32 copy per model variable (trainable weights and batch-norm moving statistics), updated once per
training step inside the replica step, saved in checkpoints, and swapped into the model for evaluation or export
with `average_weights()`.
"""

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence

import tensorflow as tf

from trainer.common.errors import UserInputError


@dataclasses.dataclass(frozen=True)
class _Targets:
    """The model variables an EMA follows, in a plain holder: neither checkpoints nor `tf.Module.variables` should
    reach the model's variables through the EMA (they already belong to the model)."""

    variables: tuple[tf.Variable, ...]


class ExponentialMovingAverage(tf.Module):
    """Keeps `average = decay_t * average + (1 - decay_t) * variable` for each of `variables`.

    `decay_t = min(decay, (1 + t) / (10 + t))` at step t, as `tf.train.ExponentialMovingAverage` with
    `num_updates`: early averages follow the weights closely, so the value the averages start from (e.g. a random
    initialisation later replaced by pretrained weights) is forgotten within tens of steps.

    Build it inside the strategy's scope: each average is created with its variable's synchronisation and
    aggregation, so per-replica batch-norm statistics (sync-on-read) get per-replica averages.
    """

    def __init__(self, variables: Sequence[tf.Variable], decay: float, name: str = "ema"):
        super().__init__(name=name)
        if isinstance(decay, bool) or not isinstance(decay, int | float) or not 0.0 < decay < 1.0:
            raise UserInputError(
                f"gin binding train.ema_decay: expected a decay in (0, 1) such as 0.9998, or None to disable the "
                f"moving average, received {decay!r}."
            )
        self.decay = float(decay)
        self._targets = _Targets(tuple(variables))
        self._strategy = tf.distribute.get_strategy()
        with tf.name_scope(name):
            self.averages = [
                tf.Variable(
                    variable.read_value(),
                    trainable=False,
                    name=variable.name.split(":")[0].replace("/", "_"),
                    synchronization=variable.synchronization,
                    aggregation=variable.aggregation,
                )
                for variable in self._targets.variables
            ]

    def decay_at(self, step: tf.Tensor) -> tf.Tensor:
        """The decay used at (0-based) training step `step`."""
        step = tf.cast(step, tf.float32)
        return tf.minimum(self.decay, (1.0 + step) / (10.0 + step))

    def update(self, step: tf.Variable | tf.Tensor) -> None:
        """Moves every average towards its variable's current value; call once per step after the update.

        Works in a replica context (it merges once, like an optimizer's update) or in a cross-replica one.
        """

        def move(average: tf.Variable, variable: tf.Tensor, decay: tf.Tensor) -> tf.Operation:
            return average.assign_sub((1.0 - decay) * (average - tf.cast(variable, average.dtype)))

        def update_all(strategy: tf.distribute.Strategy) -> None:
            decay = self.decay_at(step)
            for average, variable in zip(self.averages, self._targets.variables, strict=True):
                strategy.extended.update(average, move, args=(variable, decay), group=False)

        if tf.distribute.in_cross_replica_context():
            update_all(tf.distribute.get_strategy())
        else:
            tf.distribute.get_replica_context().merge_call(update_all)

    def _swap(self) -> None:
        def swap(variable: tf.Variable, average: tf.Variable) -> None:
            # Per device component, so per-replica statistics survive the round trip exactly.
            value = tf.identity(variable)
            variable.assign(average)
            average.assign(value)

        with self._strategy.scope():
            for variable, average in zip(self._targets.variables, self.averages, strict=True):
                self._strategy.extended.update(variable, swap, args=(average,), group=False)

    @contextlib.contextmanager
    def average_weights(self) -> Iterator[None]:
        """Inside the block the model holds the averaged weights; on exit (even on error) its own come back."""
        self._swap()
        try:
            yield
        finally:
            self._swap()


def average_weights(ema: ExponentialMovingAverage | None) -> contextlib.AbstractContextManager:
    """`ema.average_weights()`, or a no-op context when the run keeps no moving average (`ema` is None)."""
    return contextlib.nullcontext() if ema is None else ema.average_weights()
