"""Numeric precision of a run: float32, mixed_float16 (with loss scaling) or mixed_bfloat16.

Mixed precision computes in 16 bits and keeps the variables in float32; the model's logits and the loss stay in
float32 (the models cast their logits, the losses cast again). Keras layers read the global dtype policy when they
are constructed, so the policy must be in force while the model is built — `policy_scope` sets it for exactly that
span and restores the previous one, so nothing else in the process (other runs, tests) inherits it.
"""

import contextlib
import enum
from collections.abc import Iterator

import tf_keras as keras

from trainer.common.errors import UserInputError


class Precision(enum.Enum):
    """The values `train.precision` accepts (Keras mixed-precision policy names)."""

    FLOAT32 = "float32"
    MIXED_FLOAT16 = "mixed_float16"
    MIXED_BFLOAT16 = "mixed_bfloat16"


def parse(value: "str | Precision", binding: str = "train.precision") -> Precision:
    """Returns the `Precision` named `value`, or raises UserInputError naming `binding` and the valid values."""
    if isinstance(value, Precision):
        return value
    try:
        return Precision(value)
    except ValueError:
        valid = ", ".join(p.value for p in Precision)
        raise UserInputError(
            f"gin binding {binding}: expected one of {{{valid}}}, received {value!r}. float32 is exact; "
            "mixed_bfloat16 suits TPUs and recent CPUs, mixed_float16 suits NVIDIA GPUs (it adds loss scaling)."
        ) from None


@contextlib.contextmanager
def policy_scope(precision: "str | Precision") -> Iterator[None]:
    """Makes `precision` the global Keras dtype policy inside the block (build the model there)."""
    precision = parse(precision)
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(precision.value)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def wrap_optimizer(optimizer: keras.optimizers.Optimizer, precision: "str | Precision") -> keras.optimizers.Optimizer:
    """Wraps `optimizer` in a dynamic `LossScaleOptimizer` for mixed_float16; returns it unchanged otherwise.

    float16 underflows for small gradients, so the loss is multiplied by a scale that grows while gradients
    stay finite and halves (skipping the update) when they overflow. bfloat16 has float32's range and needs none.
    """
    if parse(precision) is Precision.MIXED_FLOAT16:
        return keras.mixed_precision.LossScaleOptimizer(optimizer)
    return optimizer


def uses_loss_scaling(optimizer: keras.optimizers.Optimizer) -> bool:
    """True when `optimizer` scales the loss (mixed_float16)."""
    return isinstance(optimizer, keras.mixed_precision.LossScaleOptimizer)
