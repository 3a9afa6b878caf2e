"""What a run trains or evaluates: the model built under the strategy, its optimizer, step counter and EMA."""

import contextlib
import dataclasses
from collections.abc import Callable

import tensorflow as tf
import tf_keras as keras

from trainer.core import ema as ema_lib
from trainer.core import optim, precision
from trainer.core.config import TrainConfig
from trainer.core.trainer import new_global_step
from trainer.models.batch_norm import BatchNormConfig, configure_batch_norm


@dataclasses.dataclass
class ModelState:
    """The model and the state saved with it; `checkpoint` holds them all."""

    model: keras.Model
    global_step: tf.Variable
    optimizer: keras.optimizers.Optimizer | None
    ema: ema_lib.ExponentialMovingAverage | None
    checkpoint: tf.train.Checkpoint

    def averaged_weights(self) -> contextlib.AbstractContextManager:
        """Context in which the model holds the weights to evaluate and export: the EMA averages when kept."""
        return ema_lib.average_weights(self.ema)


def build_model_state(
    strategy: tf.distribute.Strategy,
    model_fn: Callable[[], keras.Model],
    input_size: tuple[int, int],
    train_config: TrainConfig,
    optimizer_config: optim.OptimizerConfig | None,
    batch_norm: BatchNormConfig,
    channels: int = 3,
) -> ModelState:
    """Builds the model (and, given `optimizer_config`, its optimizer) in the strategy's scope and dtype policy.

    `batch_norm` reaches every batch-norm layer before the model is built; its first convolution takes
    `channels` input channels (the dataset's `image_channels`). `train_config.precision` must be
    filled in (see `TrainConfig.with_defaults`).
    """
    # The dtype policy must be in force while the layers are constructed (they keep it).
    with strategy.scope(), precision.policy_scope(train_config.precision):
        model = model_fn()
        configure_batch_norm(model, batch_norm)
        model(tf.zeros([1, *input_size, channels]), training=False)
        optimizer = None
        if optimizer_config is not None:
            optimizer = optim.build_optimizer(optimizer_config, total_steps=train_config.steps, model=model)
            optimizer = precision.wrap_optimizer(optimizer, train_config.precision)
        global_step = new_global_step()
        ema = None
        if train_config.ema_decay is not None:
            ema = ema_lib.ExponentialMovingAverage(model.variables, train_config.ema_decay)
    saved = {"model": model, "global_step": global_step}
    saved.update({"optimizer": optimizer} if optimizer is not None else {})
    saved.update({"ema": ema} if ema is not None else {})
    return ModelState(model, global_step, optimizer, ema, tf.train.Checkpoint(**saved))
