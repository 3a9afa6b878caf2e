"""Dropout whose random state lives in a variable, so checkpoints capture it and a resumed run is exact."""

import random
from typing import Any

import tensorflow as tf
import tf_keras as keras

from trainer.models.serialization import SERIALIZATION_PACKAGE


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class ResumableDropout(keras.layers.Layer):
    """Inverted dropout drawing its masks from a `tf.random.Generator` tracked by the layer.

    Keras' `Dropout` uses stateful random ops whose state is not saved: a run restored from a checkpoint draws
    the masks of a fresh start again, so it diverges from the run it resumes. Here the generator's state is a
    variable, saved and restored with the model. Built inside a strategy scope, each replica draws its own masks.

    Args:
      rate: fraction of units to drop at training, in [0, 1).
      seed: seeds the generator; by default drawn from Python's `random` (seeded by `train.seed`).
      per_example: drop whole examples (one draw per example, broadcast over the other axes) instead of units:
        stochastic depth on a residual branch, keras' `Dropout(noise_shape=(None, 1, 1, 1))`.
    """

    def __init__(self, rate: float, seed: int | None = None, per_example: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rate = float(rate)
        self.seed = seed
        self.per_example = bool(per_example)

    def build(self, input_shape) -> None:
        seed = self.seed if self.seed is not None else random.getrandbits(31)
        self._generator = tf.random.Generator.from_seed(seed)
        super().build(input_shape)

    def call(self, inputs: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        if not training or self.rate == 0.0:
            return inputs
        seed = self._generator.make_seeds(1)[:, 0]
        noise_shape = None
        if self.per_example:
            noise_shape = tf.concat([tf.shape(inputs)[:1], tf.ones([tf.rank(inputs) - 1], tf.int32)], axis=0)
        return tf.nn.experimental.stateless_dropout(inputs, self.rate, seed=seed, noise_shape=noise_shape)

    def get_config(self) -> dict[str, Any]:
        """Returns the constructor arguments."""
        config = super().get_config()
        config.update({"rate": self.rate, "seed": self.seed})
        if self.per_example:
            config["per_example"] = True
        return config
