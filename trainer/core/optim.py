"""The optimizer and its learning-rate schedule.

`OptimizerConfig` (gin `optimizer.*`) and `build_optimizer` give SGD with momentum, Adam or AdamW on a poly,
cosine or step schedule, each with an optional linear warmup, global-norm gradient clipping and a learning-rate
multiplier for the backbone. Weight decay follows each optimizer's standard: an L2 term in the loss for SGD and Adam
(`train.l2_weight_decay`, added by the train loop), decoupled decay for AdamW (`optimizer.weight_decay`); both
decay convolution and dense kernels only, never biases or batch-norm parameters.
"""

import dataclasses
import enum
import math
from collections.abc import Sequence

import gin
import tensorflow as tf
import tf_keras as keras

from trainer.common import validate
from trainer.common.errors import UserInputError
from trainer.core.losses import is_decayed


class _WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from 0 to `initial_learning_rate` over `warmup_steps`, then `decayed(step)`.

    The decay is a function of the global step over `decay_steps` (warmup included), as in DeepLab.
    """

    def __init__(self, initial_learning_rate: float, decay_steps: int, warmup_steps: int = 0):
        super().__init__()
        if decay_steps <= 0:
            raise UserInputError(f"learning-rate schedule: expected decay_steps > 0, received {decay_steps}.")
        if not 0 <= warmup_steps < decay_steps:
            raise UserInputError(
                f"gin binding optimizer.warmup_steps: expected 0 <= warmup_steps < train.steps ({decay_steps}), "
                f"received {warmup_steps}."
            )
        self.initial_learning_rate = initial_learning_rate
        self.decay_steps = decay_steps
        self.warmup_steps = warmup_steps

    def decayed(self, step: tf.Tensor) -> tf.Tensor:
        """The learning rate at float32 `step` without warmup."""
        raise NotImplementedError

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        decayed = self.decayed(step)
        if self.warmup_steps == 0:
            return decayed
        warmup = self.initial_learning_rate * step / self.warmup_steps
        return tf.where(step < self.warmup_steps, warmup, decayed)

    def get_config(self) -> dict:
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self.decay_steps,
            "warmup_steps": self.warmup_steps,
        }


class WarmupPolynomialDecay(_WarmupSchedule):
    """Linear warmup from 0 to `initial_learning_rate`, then DeepLab's "poly" decay to `end_learning_rate`."""

    def __init__(
        self,
        initial_learning_rate: float,
        decay_steps: int,
        warmup_steps: int = 0,
        power: float = 0.9,
        end_learning_rate: float = 0.0,
    ):
        super().__init__(initial_learning_rate, decay_steps, warmup_steps)
        self.power = power
        self.end_learning_rate = end_learning_rate

    def decayed(self, step: tf.Tensor) -> tf.Tensor:
        progress = tf.clip_by_value(step / self.decay_steps, 0.0, 1.0)
        decayed = (self.initial_learning_rate - self.end_learning_rate) * (1.0 - progress) ** self.power
        return decayed + self.end_learning_rate

    def get_config(self) -> dict:
        return {**super().get_config(), "power": self.power, "end_learning_rate": self.end_learning_rate}


class WarmupCosineDecay(_WarmupSchedule):
    """Linear warmup, then half a cosine from `initial_learning_rate` down to `end_learning_rate`."""

    def __init__(
        self, initial_learning_rate: float, decay_steps: int, warmup_steps: int = 0, end_learning_rate: float = 0.0
    ):
        super().__init__(initial_learning_rate, decay_steps, warmup_steps)
        self.end_learning_rate = end_learning_rate

    def decayed(self, step: tf.Tensor) -> tf.Tensor:
        progress = tf.clip_by_value(step / self.decay_steps, 0.0, 1.0)
        cosine = 0.5 * (1.0 + tf.cos(math.pi * progress))
        return self.end_learning_rate + (self.initial_learning_rate - self.end_learning_rate) * cosine

    def get_config(self) -> dict:
        return {**super().get_config(), "end_learning_rate": self.end_learning_rate}


class WarmupStepDecay(_WarmupSchedule):
    """Linear warmup, then `initial_learning_rate * factor**i` after the i-th of the ascending `boundaries`."""

    def __init__(
        self,
        initial_learning_rate: float,
        decay_steps: int,
        boundaries: Sequence[int],
        factor: float = 0.1,
        warmup_steps: int = 0,
    ):
        super().__init__(initial_learning_rate, decay_steps, warmup_steps)
        boundaries = tuple(boundaries)
        if (
            not boundaries
            or any(isinstance(b, bool) or not isinstance(b, int) or b <= 0 for b in boundaries)
            or list(boundaries) != sorted(set(boundaries))
        ):
            raise UserInputError(
                "gin binding optimizer.step_boundaries: expected a non-empty, strictly ascending tuple of positive "
                f"step numbers at which the learning rate drops, received {boundaries!r}."
            )
        if not 0.0 < factor < 1.0:
            raise UserInputError(f"gin binding optimizer.step_factor: expected 0 < factor < 1, received {factor!r}.")
        self.boundaries = boundaries
        self.factor = factor

    def decayed(self, step: tf.Tensor) -> tf.Tensor:
        drops = tf.reduce_sum(tf.cast(step >= tf.constant(self.boundaries, tf.float32), tf.float32))
        return self.initial_learning_rate * tf.pow(self.factor, drops)

    def get_config(self) -> dict:
        return {**super().get_config(), "boundaries": self.boundaries, "factor": self.factor}


class _PerVariableLearningRate:
    """Mixin for a tf_keras optimizer: per-variable learning-rate multipliers and kernel-only decoupled decay.

    Keras optimizers read `self.learning_rate` inside `update_step(gradient, variable)`, which runs once per
    variable in a single thread (the cross-replica merge under Mirrored strategies), so scaling the learning rate
    there while that variable is updated gives it its own learning rate, for every update rule alike. Decoupled
    weight decay (AdamW) is applied in the same place, so it too uses the variable's learning rate, as in
    PyTorch parameter groups.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # _no_dependency: a plain dict (int keys) that checkpoints need not track.
        self._learning_rate_multipliers = self._no_dependency({})
        self._active_multiplier = 1.0

    def set_learning_rate_multiplier(self, variables: Sequence[tf.Variable], multiplier: float) -> None:
        """Updates `variables` with `multiplier` × the schedule's learning rate."""
        for variable in variables:
            self._learning_rate_multipliers[self._var_key(variable)] = float(multiplier)

    @property
    def learning_rate(self):
        learning_rate = super().learning_rate
        multiplier = getattr(self, "_active_multiplier", 1.0)
        return learning_rate if multiplier == 1.0 else learning_rate * multiplier

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        keras.optimizers.Optimizer.learning_rate.fset(self, learning_rate)

    def _apply_weight_decay(self, variables):
        # Applied per variable in update_step instead, under that variable's learning rate.
        del variables

    def update_step(self, gradient, variable):
        self._active_multiplier = self._learning_rate_multipliers.get(self._var_key(variable), 1.0)
        try:
            if self.weight_decay is not None and is_decayed(variable):
                learning_rate = tf.cast(self.learning_rate, variable.dtype)
                variable.assign_sub(variable * tf.cast(self.weight_decay, variable.dtype) * learning_rate)
            return super().update_step(gradient, variable)
        finally:
            self._active_multiplier = 1.0


class SGD(_PerVariableLearningRate, keras.optimizers.SGD):
    """tf_keras SGD (with momentum) with per-variable learning-rate multipliers."""


class Adam(_PerVariableLearningRate, keras.optimizers.Adam):
    """tf_keras Adam with per-variable learning-rate multipliers."""


class AdamW(_PerVariableLearningRate, keras.optimizers.AdamW):
    """tf_keras AdamW (decoupled weight decay on kernels only) with per-variable learning-rate multipliers."""


class Algorithm(enum.Enum):
    """The update rules `optimizer.algorithm` accepts."""

    SGD = "sgd"
    ADAM = "adam"
    ADAMW = "adamw"


class Schedule(enum.Enum):
    """The learning-rate schedules `optimizer.schedule` accepts."""

    POLY = "poly"
    COSINE = "cosine"
    STEP = "step"


def decouples_weight_decay(optimizer: keras.optimizers.Optimizer) -> bool:
    """True when `optimizer` (possibly inside a LossScaleOptimizer) decays weights itself (AdamW)."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    return isinstance(inner, keras.optimizers.AdamW)


@gin.configurable("optimizer")
@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """SGD with momentum (default), Adam or AdamW on a warmup + decay schedule; gin `optimizer.<field>`.

    `algorithm`: sgd, adam or adamw; `momentum` and `nesterov` apply to SGD, Adam and AdamW use the standard
    moments (beta_1 0.9, beta_2 0.999). `learning_rate` is the peak, reached at the end of `warmup_steps` of linear
    warmup. `schedule`: poly (DeepLab's, power `poly_power`, to `end_learning_rate`), cosine (to
    `end_learning_rate`) or step (× `step_factor` at each of `step_boundaries`). `weight_decay` is AdamW's
    decoupled decay (default 0.01); SGD and Adam take theirs as an L2 term in the loss (`train.l2_weight_decay`).
    `global_clipnorm` clips the all-reduced, unscaled gradient (None: no clipping). The backbone's learning rate
    is `backbone_learning_rate_multiplier` × the schedule's (fine-tuning recipes use e.g. 0.1).
    """

    algorithm: str = Algorithm.SGD.value
    learning_rate: float = 0.01
    schedule: str = Schedule.POLY.value
    warmup_steps: int = 0
    poly_power: float = 0.9
    end_learning_rate: float = 0.0
    step_boundaries: Sequence[int] = ()
    step_factor: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float | None = None
    global_clipnorm: float | None = None
    backbone_learning_rate_multiplier: float = 1.0

    def __post_init__(self):
        algorithm = validate.enum_member("gin binding optimizer.algorithm", Algorithm, self.algorithm)
        validate.enum_member("gin binding optimizer.schedule", Schedule, self.schedule)
        validate.positive_number("gin binding optimizer.learning_rate", self.learning_rate)
        if self.global_clipnorm is not None:
            validate.positive_number("gin binding optimizer.global_clipnorm (None: no clipping)", self.global_clipnorm)
        validate.non_negative_number(
            "gin binding optimizer.backbone_learning_rate_multiplier", self.backbone_learning_rate_multiplier
        )
        if algorithm is Algorithm.ADAMW:
            if self.weight_decay is not None:
                validate.non_negative_number("gin binding optimizer.weight_decay", self.weight_decay)
        elif self.weight_decay is not None:
            raise UserInputError(
                f"gin binding optimizer.weight_decay: decoupled weight decay applies to algorithm 'adamw', received "
                f"{self.weight_decay!r} with algorithm {algorithm.value!r}; {algorithm.value} decays weights "
                "through an L2 term in the loss: set train.l2_weight_decay instead."
            )

    def learning_rates(self, total_steps: int) -> keras.optimizers.schedules.LearningRateSchedule:
        """The warmup + decay schedule spanning `total_steps` (`train.steps`)."""
        schedule = Schedule(self.schedule)
        if schedule is Schedule.POLY:
            return WarmupPolynomialDecay(
                self.learning_rate,
                total_steps,
                self.warmup_steps,
                power=self.poly_power,
                end_learning_rate=self.end_learning_rate,
            )
        if schedule is Schedule.COSINE:
            return WarmupCosineDecay(self.learning_rate, total_steps, self.warmup_steps, self.end_learning_rate)
        return WarmupStepDecay(
            self.learning_rate, total_steps, self.step_boundaries, self.step_factor, self.warmup_steps
        )


def build_optimizer(
    config: OptimizerConfig, total_steps: int, model: keras.Model | None = None
) -> keras.optimizers.Optimizer:
    """Returns the optimizer `config` describes, its schedule spanning `total_steps`.

    `model` is needed for `backbone_learning_rate_multiplier` (its `backbone` attribute).
    """
    common = {"learning_rate": config.learning_rates(total_steps), "global_clipnorm": config.global_clipnorm}
    algorithm = Algorithm(config.algorithm)
    if algorithm is Algorithm.SGD:
        optimizer = SGD(momentum=config.momentum, nesterov=config.nesterov, **common)
    elif algorithm is Algorithm.ADAM:
        optimizer = Adam(**common)
    else:
        optimizer = AdamW(weight_decay=0.01 if config.weight_decay is None else config.weight_decay, **common)
    if config.backbone_learning_rate_multiplier != 1.0:
        _set_backbone_multiplier(optimizer, model, config.backbone_learning_rate_multiplier)
    return optimizer


def _set_backbone_multiplier(optimizer: "SGD | Adam | AdamW", model: keras.Model | None, multiplier: float) -> None:
    backbone = getattr(model, "backbone", None)
    if backbone is None:
        raise UserInputError(
            "gin binding optimizer.backbone_learning_rate_multiplier: expected a model with a `backbone` "
            f"(a DeepLab model), received {type(model).__name__}; leave the multiplier at 1.0 for this model."
        )
    if not backbone.trainable_variables:
        raise UserInputError(
            "gin binding optimizer.backbone_learning_rate_multiplier: the backbone has no variables yet; build "
            "the model (call it once) before the optimizer."
        )
    optimizer.set_learning_rate_multiplier(backbone.trainable_variables, multiplier)
