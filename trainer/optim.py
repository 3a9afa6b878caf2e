"""The optimizer and its learning-rate schedule."""

import enum

import gin
import tensorflow as tf
import tf_keras as keras

from trainer.config import ConfigError


class WarmupPolynomialDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from 0 to `initial_learning_rate`, then DeepLab's "poly" decay to `end_learning_rate`."""

    def __init__(
        self,
        initial_learning_rate: float,
        decay_steps: int,
        warmup_steps: int = 0,
        power: float = 0.9,
        end_learning_rate: float = 0.0,
    ):
        super().__init__()
        if decay_steps <= 0:
            raise ConfigError(f"learning-rate schedule: expected decay_steps > 0, received {decay_steps}.")
        if not 0 <= warmup_steps < decay_steps:
            raise ConfigError(
                f"gin binding optimizer.warmup_steps: expected 0 <= warmup_steps < train.steps ({decay_steps}), "
                f"received {warmup_steps}."
            )
        self.initial_learning_rate = initial_learning_rate
        self.decay_steps = decay_steps
        self.warmup_steps = warmup_steps
        self.power = power
        self.end_learning_rate = end_learning_rate

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        progress = tf.clip_by_value(step / self.decay_steps, 0.0, 1.0)
        decayed = (self.initial_learning_rate - self.end_learning_rate) * (1.0 - progress) ** self.power
        decayed += self.end_learning_rate
        if self.warmup_steps == 0:
            return decayed
        warmup = self.initial_learning_rate * step / self.warmup_steps
        return tf.where(step < self.warmup_steps, warmup, decayed)

    def get_config(self) -> dict:
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self.decay_steps,
            "warmup_steps": self.warmup_steps,
            "power": self.power,
            "end_learning_rate": self.end_learning_rate,
        }


class Algorithm(enum.Enum):
    """The update rules `optimizer.algorithm` accepts."""

    SGD = "sgd"
    ADAM = "adam"


@gin.configurable("optimizer")
def build_optimizer(
    total_steps: int,
    algorithm: str = Algorithm.SGD.value,
    learning_rate: float = 0.01,
    momentum: float = 0.9,
    nesterov: bool = False,
    warmup_steps: int = 0,
    poly_power: float = 0.9,
    end_learning_rate: float = 0.0,
) -> keras.optimizers.Optimizer:
    """SGD with momentum (default) or Adam, on a warmup + polynomial schedule spanning `total_steps`.

    `momentum` and `nesterov` apply to SGD; Adam uses its standard moments (beta_1 0.9, beta_2 0.999).
    """
    try:
        algorithm = Algorithm(algorithm)
    except ValueError:
        valid = ", ".join(a.value for a in Algorithm)
        raise ConfigError(
            f"gin binding optimizer.algorithm: expected one of {{{valid}}}, received {algorithm!r}."
        ) from None
    if learning_rate <= 0:
        raise ConfigError(f"gin binding optimizer.learning_rate: expected > 0, received {learning_rate}.")
    schedule = WarmupPolynomialDecay(
        learning_rate, total_steps, warmup_steps=warmup_steps, power=poly_power, end_learning_rate=end_learning_rate
    )
    if algorithm is Algorithm.ADAM:
        return keras.optimizers.Adam(learning_rate=schedule)
    return keras.optimizers.SGD(learning_rate=schedule, momentum=momentum, nesterov=nesterov)
