"""Run-level configuration: the modes, the gin-configurable train/eval settings, gin parsing."""

import dataclasses
import difflib
import inspect
import re
from collections.abc import Sequence

import gin

from trainer.common import validate
from trainer.common.errors import UserInputError
from trainer.common.validate import FlagEnum
from trainer.core import metrics, precision


class Mode(FlagEnum):
    """What a run does; `--mode` takes one of these values."""

    TRAIN = "train"
    EVAL = "eval"
    TRAIN_AND_EVAL = "train_and_eval"
    CONTINUOUS_EVAL = "continuous_eval"
    EXPORT = "export"

    @classmethod
    def flag_name(cls) -> str:
        return "--mode"


@gin.configurable("train")
@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How long and how to train; bound in gin as `train.<field>`.

    `l2_weight_decay` adds `l2_weight_decay * sum(w**2)` over convolution kernels to the loss (SGD and Adam; 0
    with AdamW, which decays by `optimizer.weight_decay`); `jit_compile` compiles each replica's forward and
    backward pass with XLA. `precision`: float32, mixed_float16 (loss scaling) or mixed_bfloat16. Unset,
    `steps_per_loop` and `precision` follow the strategy: 500 and mixed_bfloat16 on TPU, 50 and float32 elsewhere.
    `gradient_accumulation_steps` splits each replica's batch into that many sequential micro-batches.
    `ema_decay` keeps an exponential moving average of the weights (e.g. 0.9998; None: none), used for
    evaluation and export. `summary_every` > 0 also records per-step scalars inside the host loop every that many
    steps. `nan_recovery_attempts` > 0: on a NaN/Inf loss or gradient, restore the last checkpoint and continue
    past the bad batches, at most that many times, before raising. `deterministic` enables TensorFlow's op
    determinism, so that a run killed at any step and resumed ends with the weights of an uninterrupted one.
    """

    steps: int = 1000
    global_batch_size: int = 16
    steps_per_loop: int | None = None
    checkpoint_every_steps: int = 500
    max_checkpoints_to_keep: int = 3
    l2_weight_decay: float = 1e-4
    seed: int = 0
    jit_compile: bool = False
    deterministic: bool = False
    precision: str | None = None
    gradient_accumulation_steps: int = 1
    ema_decay: float | None = None
    summary_every: int = 0
    nan_recovery_attempts: int = 0

    def __post_init__(self):
        positive = ["steps", "global_batch_size", "checkpoint_every_steps", "gradient_accumulation_steps"]
        positive += ["max_checkpoints_to_keep"] + (["steps_per_loop"] if self.steps_per_loop is not None else [])
        for name in positive:
            validate.positive_int(f"gin binding train.{name}", getattr(self, name))
        for name in ("summary_every", "nan_recovery_attempts"):
            validate.non_negative_int(f"gin binding train.{name}", getattr(self, name))
        validate.non_negative_number("gin binding train.l2_weight_decay", self.l2_weight_decay)
        if self.precision is not None:
            precision.parse(self.precision)

    def with_defaults(self, steps_per_loop: int, precision_name: str) -> "TrainConfig":
        """Returns this config with `steps_per_loop` and `precision`, where unset, filled in (the strategy's)."""
        return dataclasses.replace(
            self, steps_per_loop=self.steps_per_loop or steps_per_loop, precision=self.precision or precision_name
        )

    def check_replicas(self, num_replicas: int) -> None:
        """Raises UserInputError unless the global batch splits into `num_replicas` × accumulation micro-batches."""
        where = "gin binding train.global_batch_size"
        per_replica = validate.divisible_batch(where, self.global_batch_size, num_replicas)
        if per_replica % self.gradient_accumulation_steps:
            raise UserInputError(
                f"gin binding train.gradient_accumulation_steps: expected a divisor of the per-replica batch "
                f"({self.global_batch_size} / {num_replicas} replicas), received {self.gradient_accumulation_steps}."
            )


@gin.configurable("evaluation")
@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """When and how to evaluate; bound in gin as `evaluation.<field>`.

    `best_metric` (miou, macc, pixel_accuracy, fwiou, mf1, mprecision or mrecall) picks the checkpoint copied
    to `model_dir/best/`; `continuous_timeout_secs` is how long `--mode=continuous_eval` waits for a new
    checkpoint before stopping. `early_stopping_patience` > 0 ends `train_and_eval` after that many evaluations
    in a row without `best_metric` improving on its best by more than `early_stopping_min_delta` (0: never).
    """

    every_steps: int = 500
    global_batch_size: int = 16
    best_metric: str = "miou"
    continuous_timeout_secs: float = 3600.0
    early_stopping_patience: int = 0
    early_stopping_min_delta: float = 0.0

    def __post_init__(self):
        validate.non_negative_int("gin binding evaluation.early_stopping_patience", self.early_stopping_patience)
        validate.non_negative_number("gin binding evaluation.early_stopping_min_delta", self.early_stopping_min_delta)
        validate.positive_int("gin binding evaluation.every_steps", self.every_steps)
        validate.positive_int("gin binding evaluation.global_batch_size", self.global_batch_size)
        validate.positive_number("gin binding evaluation.continuous_timeout_secs", self.continuous_timeout_secs)
        validate.choice("gin binding evaluation.best_metric", self.best_metric, metrics.SCALAR_METRICS)

    def check_replicas(self, num_replicas: int) -> None:
        """Raises UserInputError unless the eval batch splits evenly over `num_replicas`."""
        validate.divisible_batch("gin binding evaluation.global_batch_size", self.global_batch_size, num_replicas)


# gin keeps its registry private; reading it is the only way to suggest what the user meant.
_REGISTRY = gin.config._REGISTRY  # pylint: disable=protected-access


def _suggest(unknown: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(unknown, sorted(set(candidates)), n=1)
    return f" Did you mean '{close[0]}'?" if close else ""


def _suggest_configurable(unknown: str) -> str:
    return _suggest(unknown, [selector.split(".")[-1] for selector, _ in _REGISTRY.items()])


def _suggest_parameter(configurable_name: str, unknown: str) -> str:
    configurable = _REGISTRY.get_match(configurable_name)
    if configurable is None:
        return ""
    target = configurable.wrapped
    parameters = inspect.signature(target.__init__ if inspect.isclass(target) else target).parameters
    return _suggest(unknown, [name for name in parameters if name != "self"])


def parse_gin(gin_files: Sequence[str], gin_bindings: Sequence[str]) -> None:
    """Parses gin files then bindings, turning gin's errors into a UserInputError that names the culprit."""
    for path in gin_files:
        try:
            gin.parse_config_file(path)
        except OSError as error:
            raise UserInputError(f"--gin_file={path}: cannot read it ({error}).") from None
        except (ValueError, SyntaxError) as error:
            raise UserInputError(f"--gin_file={path}: {_explain(error)}") from None
    for binding in gin_bindings:
        try:
            gin.parse_config(binding)
        except (ValueError, SyntaxError) as error:
            raise UserInputError(f"--gin_bindings={binding!r}: {_explain(error)}") from None


def _explain(error: Exception) -> str:
    message = str(error).splitlines()[0]
    unknown_configurable = re.match(r"No configurable matching '([^']+)'", message)
    unknown_parameter = re.match(r"Configurable '([^']+)' doesn't have a parameter named '([^']+)'", message)
    if unknown_configurable:
        message += _suggest_configurable(unknown_configurable.group(1))
    elif unknown_parameter:
        message += _suggest_parameter(*unknown_parameter.groups())
    return message
