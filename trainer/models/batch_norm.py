"""The model's batch normalisation: its layer, the `batch_norm.*` settings and how they reach every BN layer.

Each layer family builds its BN layers with its own defaults (ResNet's epsilon 1.001e-5 and MobileNetV2's
momentum 0.999 are those its Keras ImageNet weights were trained with; everything else has Keras' 0.99 / 1e-3).
`BatchNormConfig` overrides a default only where a field is set, and `configure_batch_norm` applies it to every BN
layer of a model, or fails naming a layer it cannot reach: a setting never misses a layer silently.
"""

import dataclasses
from typing import Any

import gin
import tensorflow as tf
import tf_keras as keras

from trainer.common import validate
from trainer.common.errors import UserInputError, expected
from trainer.models.serialization import SERIALIZATION_PACKAGE

DEFAULT_MOMENTUM = 0.99
DEFAULT_EPSILON = 1e-3
# The `get_config` key under which a layer holding BN layers keeps the settings applied to them.
CONFIG_KEY = "batch_norm"


@gin.configurable("batch_norm")
@dataclasses.dataclass(frozen=True)
class BatchNormConfig:
    """Settings for every BN layer of the model; a field left at None (or False) keeps each layer's default.

    Args:
      sync: synchronise the batch statistics across replicas (cross-replica batch norm).
      momentum: of the moving statistics; None keeps each family's (0.99; MobileNetV2 0.999).
      epsilon: added to the variance; None keeps each family's (1e-3; ResNet 1.001e-5).
      freeze_statistics: normalise with the moving statistics and never update them, in training too (for
        fine-tuning with small per-replica batches; gamma and beta still train).
    """

    sync: bool = False
    momentum: float | None = None
    epsilon: float | None = None
    freeze_statistics: bool = False

    def __post_init__(self) -> None:
        for name in ("sync", "freeze_statistics"):
            if not isinstance(getattr(self, name), bool):
                raise expected(f"batch_norm.{name}", "True or False", getattr(self, name))
        if self.momentum is not None:
            validate.non_negative_number("batch_norm.momentum", self.momentum)
            if self.momentum >= 1:
                raise expected("batch_norm.momentum", "a number in [0, 1) or None", self.momentum)
        if self.epsilon is not None:
            validate.positive_number("batch_norm.epsilon", self.epsilon)

    def overrides(self) -> dict[str, Any]:
        """{field: value} of the fields that change a layer's default (not None, not False)."""
        values = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        return {name: value for name, value in values.items() if value is not None and value is not False}

    def merged_into(self, previous: "BatchNormConfig | None") -> "BatchNormConfig":
        """`previous` with this config's set fields on top."""
        return BatchNormConfig(**{**(previous.overrides() if previous else {}), **self.overrides()})


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class BatchNorm(keras.layers.BatchNormalization):
    """Keras' BatchNormalization that `configure_batch_norm` can reconfigure until it is built.

    With `freeze_statistics` it normalises with its moving statistics and never updates them, whatever
    `training` says: gamma and beta still train, the mean and variance stay as loaded (DeepLab's
    `fine_tune_batch_norm=False`).
    """

    def __init__(self, freeze_statistics: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.freeze_statistics = bool(freeze_statistics)
        self._choose_kernel()

    def configure(self, config: BatchNormConfig) -> None:
        """Applies the set fields of `config`; the layer must not be built yet."""
        if self.built:
            raise RuntimeError(f"{type(self).__name__} {self.name!r}: configure batch norm before building the model.")
        if config.momentum is not None:
            self.momentum = config.momentum
        if config.epsilon is not None:
            self.epsilon = config.epsilon
        self.synchronized = self.synchronized or config.sync
        self.freeze_statistics = self.freeze_statistics or config.freeze_statistics
        self._choose_kernel()

    def _choose_kernel(self) -> None:
        # Keras picks the fused kernel in __init__ unless `synchronized` is set, and the fused kernel never
        # all-reduces: a `synchronized` set after __init__ only takes effect if `fused` follows it. Frozen
        # statistics are never computed from the batch, so a frozen layer keeps the fused kernel.
        if self.synchronized and not self.freeze_statistics:
            self.fused = False
        else:
            self.fused = None if self._fused_can_be_used() else False

    def call(self, inputs: tf.Tensor, training: bool | None = None, mask: tf.Tensor | None = None) -> tf.Tensor:
        """Normalises `inputs`, in inference mode whatever `training` says when the statistics are frozen."""
        return super().call(inputs, training=False if self.freeze_statistics else training, mask=mask)

    def get_config(self) -> dict[str, Any]:
        """Keras' config plus `synchronized` (which Keras leaves out) and `freeze_statistics`."""
        config = super().get_config()
        config.update({"synchronized": self.synchronized, "freeze_statistics": self.freeze_statistics})
        return config


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class FrozenStatisticsBatchNormalization(BatchNorm):
    """The class frozen BN layers were saved as before `freeze_statistics` became a `BatchNorm` setting."""

    def __init__(self, freeze_statistics: bool = True, **kwargs: Any) -> None:
        super().__init__(freeze_statistics=freeze_statistics, **kwargs)


def batch_norm_layer(name: str, momentum: float = DEFAULT_MOMENTUM, epsilon: float = DEFAULT_EPSILON) -> BatchNorm:
    """Returns a BN layer with its family's defaults, which `configure_batch_norm` may override."""
    return BatchNorm(momentum=momentum, epsilon=epsilon, name=name)


class BatchNormOwner:
    """Mixin of the layers that hold BN layers: `get_config` keeps the settings `configure_batch_norm` applied
    (under "batch_norm") and `from_config` applies them again, so a rebuilt layer normalises the same way."""

    batch_norm_config: BatchNormConfig | None = None

    def get_config(self) -> dict[str, Any]:
        """The owner's config, with the applied batch-norm settings when there are any."""
        config = super().get_config()
        if self.batch_norm_config is not None:
            config[CONFIG_KEY] = self.batch_norm_config.overrides()
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> keras.layers.Layer:
        """Rebuilds the layer and applies the batch-norm settings its config kept."""
        config = dict(config)
        overrides = config.pop(CONFIG_KEY, None)
        layer = super().from_config(config)
        if overrides:
            configure_batch_norm(layer, BatchNormConfig(**overrides))
        return layer


class FixedBatchNorm:
    """Marks a layer whose batch norm no setting can change (a SavedModel's traced functions, for example)."""


def configure_batch_norm(model: keras.layers.Layer, config: BatchNormConfig) -> int:
    """Applies the set fields of `config` to every BN layer of `model`, which must not be built yet.

    Returns:
      The number of BN layers that `config` applies to (all of the model's).
    Raises:
      UserInputError: a field is set and the model holds a BN layer that cannot take it: a Keras
        BatchNormalization this trainer did not build, or a `FixedBatchNorm` layer such as `HubBackbone`.
    """
    layers = [model, *model.submodules]
    norms = [layer for layer in layers if isinstance(layer, BatchNorm)]
    overrides = config.overrides()
    if not overrides:
        return len(norms)
    built = [norm.name for norm in norms if norm.built]
    if built:
        raise RuntimeError(f"configure_batch_norm: expected an unbuilt model, received one whose {built} are built.")
    unreachable = [
        f"{layer.name!r} ({type(layer).__name__})"
        for layer in layers
        if isinstance(layer, FixedBatchNorm)
        or (isinstance(layer, keras.layers.BatchNormalization) and not isinstance(layer, BatchNorm))
    ]
    if unreachable:
        bindings = ", ".join(f"batch_norm.{name} = {value!r}" for name, value in overrides.items())
        raise UserInputError(
            f"gin bindings {bindings}: expected every batch-norm layer of the model to take them, received layers "
            f"that cannot: {', '.join(unreachable)} (a Keras BatchNormalization this trainer did not build, or a "
            "SavedModel whose batch norm is fixed). Remove the bindings or use one of the trainer's backbones."
        )
    for norm in norms:
        norm.configure(config)
    for layer in layers:
        if isinstance(layer, BatchNormOwner):
            layer.batch_norm_config = config.merged_into(layer.batch_norm_config)
    return len(norms)
