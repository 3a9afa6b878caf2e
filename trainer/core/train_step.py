"""One replica's training step: forward, loss, backward (over micro-batches if asked), all-reduce, update."""

import dataclasses

import tensorflow as tf
import tf_keras as keras

from trainer.common.errors import UserInputError
from trainer.core import losses, optim, precision
from trainer.core.config import TrainConfig
from trainer.core.ema import ExponentialMovingAverage

# Per-replica shares of the global-batch loss terms: summed over replicas they are the global values.
LOSS_TERMS = ("cross_entropy", "l2_regularization")


@dataclasses.dataclass(frozen=True)
class StepOptions:
    """The settings of one step (from `train.*` and the dataset).

    `l2_weight_decay` adds that coefficient × the L2 norm of the kernels to the loss (SGD/Adam's weight decay; 0
    with AdamW, which decays weights itself). `jit_compile` compiles each replica's forward and backward pass
    with XLA. `gradient_accumulation_steps` (k) splits each replica's batch into k micro-batches run one after
    the other, their gradients summed: the update of the whole batch with 1/k of the activation memory.
    """

    ignore_label: int
    l2_weight_decay: float = 0.0
    jit_compile: bool = False
    gradient_accumulation_steps: int = 1

    @classmethod
    def from_config(cls, train_config: TrainConfig, ignore_label: int) -> "StepOptions":
        """The step settings of `train_config` for a dataset whose ignore label is `ignore_label`."""
        return cls(
            ignore_label=ignore_label,
            l2_weight_decay=train_config.l2_weight_decay,
            jit_compile=train_config.jit_compile,
            gradient_accumulation_steps=train_config.gradient_accumulation_steps,
        )


class ReplicaStep:
    """Called inside `strategy.run`: trains on one replica's batch and returns its scalars as one vector.

    The loss of the global batch is normalised by its contributing pixels counted over all replicas; the
    gradient is all-reduced and applied (clipping, learning-rate multipliers and loss scaling are the
    optimizer's); the moving average `ema`, if any, follows. The vector holds this replica's shares of
    `LOSS_TERMS` and of the gradient norm, so summing it over replicas gives the global values.
    """

    def __init__(
        self,
        model: keras.Model,
        optimizer: keras.optimizers.Optimizer,
        loss: losses.SegmentationLoss,
        options: StepOptions,
        global_step: tf.Variable,
        ema: ExponentialMovingAverage | None = None,
    ):
        if options.l2_weight_decay and optim.decouples_weight_decay(optimizer):
            raise UserInputError(
                f"gin binding train.l2_weight_decay: expected 0 with optimizer.algorithm = 'adamw', received "
                f"{options.l2_weight_decay}; AdamW decays the weights itself (optimizer.weight_decay), an L2 term "
                "in the loss would decay them twice. Set train.l2_weight_decay = 0."
            )
        if getattr(model, "num_classes", None) is not None:
            loss.check_num_classes(model.num_classes)
        self._model = model
        self._optimizer = optimizer
        self._loss = loss
        self._options = options
        self._global_step = global_step
        self._ema = ema
        self._variables = model.trainable_variables
        self.scales_loss = precision.uses_loss_scaling(optimizer)
        # Only the forward and backward pass is compiled; the all-reduce and the update stay outside, so the
        # same step runs under every strategy.
        self._compute = tf.function(self._loss_and_gradients, jit_compile=True) if options.jit_compile else None

    def _loss_and_gradients(
        self, images: tf.Tensor, labels: tf.Tensor, normalizer: tf.Tensor, decay_coefficient: tf.Tensor
    ) -> tuple[dict[str, tf.Tensor], list[tf.Tensor]]:
        with tf.GradientTape() as tape:
            logits = self._model(images, training=True)
            # `cross_entropy` holds the data term: the weighted sum of `loss.terms` (cross-entropy by default).
            cross_entropy = self._loss.weighted_loss(labels, logits, self._options.ignore_label, normalizer)
            if self._options.l2_weight_decay:
                l2 = decay_coefficient * losses.l2_kernel_penalty(self._variables)
            else:
                l2 = tf.constant(0.0)
            total = cross_entropy + l2
            objective = self._optimizer.get_scaled_loss(total) if self.scales_loss else total
        gradients = tape.gradient(objective, self._variables, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return {"cross_entropy": cross_entropy, "l2_regularization": l2}, gradients

    def _micro_batch(self, images, labels, normalizer, decay_coefficient):
        compute = self._compute or self._loss_and_gradients
        return compute(images, labels, normalizer, decay_coefficient)

    def _accumulated(
        self, images: tf.Tensor, labels: tf.Tensor, normalizer: tf.Tensor, decay_coefficient: tf.Tensor
    ) -> tuple[dict[str, tf.Tensor], list[tf.Tensor]]:
        accumulation = self._options.gradient_accumulation_steps
        batch = images.shape[0]
        if batch is not None and batch % accumulation:
            raise UserInputError(
                f"gin binding train.gradient_accumulation_steps: expected a divisor of the per-replica batch "
                f"({batch} = train.global_batch_size / replicas), received {accumulation}."
            )
        micro_images = tf.reshape(images, tf.concat([[accumulation, -1], tf.shape(images)[1:]], 0))
        micro_labels = tf.reshape(labels, tf.concat([[accumulation, -1], tf.shape(labels)[1:]], 0))

        def body(index, terms, gradients):
            micro_terms, micro_gradients = self._micro_batch(
                micro_images[index], micro_labels[index], normalizer, decay_coefficient
            )
            terms = {name: terms[name] + micro_terms[name] for name in LOSS_TERMS}
            gradients = [a + b for a, b in zip(gradients, micro_gradients, strict=True)]
            return index + 1, terms, gradients

        initial = (
            tf.constant(0),
            {name: tf.constant(0.0) for name in LOSS_TERMS},
            [tf.zeros_like(v) for v in self._variables],
        )
        # One micro-batch at a time (parallel_iterations=1): running them concurrently would bring back the
        # memory the accumulation exists to save.
        _, terms, gradients = tf.while_loop(
            lambda index, *_: index < accumulation, body, initial, parallel_iterations=1
        )
        return terms, gradients

    def __call__(self, images: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
        replica_context = tf.distribute.get_replica_context()
        num_replicas = replica_context.num_replicas_in_sync
        accumulation = self._options.gradient_accumulation_steps
        normalizer = replica_context.all_reduce(
            tf.distribute.ReduceOp.SUM, self._loss.term_normalizers(labels, self._options.ignore_label)
        )
        normalizer = tf.maximum(normalizer, 1.0)
        # Gradients are summed across replicas and micro-batches, so each carries its share of the penalty.
        decay_coefficient = tf.constant(self._options.l2_weight_decay / (num_replicas * accumulation), tf.float32)
        if accumulation == 1:
            terms, gradients = self._micro_batch(images, labels, normalizer, decay_coefficient)
        else:
            terms, gradients = self._accumulated(images, labels, normalizer, decay_coefficient)
        if self.scales_loss:
            gradients = self._optimizer.get_unscaled_gradients(gradients)
        gradients = replica_context.all_reduce(tf.distribute.ReduceOp.SUM, gradients)
        gradient_norm = tf.linalg.global_norm(gradients)
        self._optimizer.apply_gradients(zip(gradients, self._variables, strict=True), skip_gradients_aggregation=True)
        if self._ema is not None:
            self._ema.update(self._global_step)
        # One vector, so the host-side reduction is a single collective (and MultiWorkerMirrored reduces tensors,
        # not dicts). Every replica has the same gradient norm.
        return tf.stack([terms[name] for name in LOSS_TERMS] + [gradient_norm / num_replicas])
