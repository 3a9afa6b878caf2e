"""The compiled replica steps and the host loops that run many of them per `tf.function` call.

The inner step (what one replica does with one batch) is separate from the outer loop (how many steps run
per host round trip); the loops take the step count as a tensor, so changing it never retraces.
"""

from collections.abc import Callable, Iterator

import tensorflow as tf
import tf_keras as keras

from trainer import losses, metrics
from trainer.inference import InferenceConfig, predict_logits

TrainLoop = Callable[[Iterator, tf.Tensor], dict]
EvalLoop = Callable[[Iterator, tf.Tensor], tf.Tensor]


def make_train_loop(
    strategy: tf.distribute.Strategy,
    model: keras.Model,
    optimizer: keras.optimizers.Optimizer,
    global_step: tf.Variable,
    ignore_label: int,
    l2_weight_decay: float,
    jit_compile: bool = False,
) -> TrainLoop:
    """Returns `train_loop(iterator, num_steps)`, which trains `num_steps` steps and returns loop statistics.

    The returned dict holds `loss` (mean over the loop of the global-batch loss, weight decay included),
    `cross_entropy` (same, without decay), `learning_rate` (at the last step) and `all_finite` (False if any
    loss in the loop was NaN or Inf; the host raises on it). `jit_compile` compiles the replica's forward and
    backward pass with XLA (what TPUs require; static shapes throughout).
    """

    def loss_and_gradients(
        images: tf.Tensor, labels: tf.Tensor, global_valid_pixels: tf.Tensor, num_replicas: int
    ) -> tuple[tf.Tensor, tf.Tensor, list[tf.Tensor]]:
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            loss_sum, _ = losses.pixel_cross_entropy_sum(labels, logits, ignore_label)
            cross_entropy = loss_sum / tf.maximum(global_valid_pixels, 1.0)
            # Gradients are summed across replicas, so each replica carries 1/num_replicas of the penalty.
            decay = l2_weight_decay * losses.l2_kernel_penalty(model.trainable_variables) / num_replicas
            loss = cross_entropy + decay
        return loss, cross_entropy, tape.gradient(loss, model.trainable_variables)

    if jit_compile:
        # Only the model's forward and backward pass is compiled; the all-reduce and the optimizer update
        # stay outside, so the same step runs under every strategy.
        loss_and_gradients = tf.function(loss_and_gradients, jit_compile=True)

    def replica_step(images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        replica_context = tf.distribute.get_replica_context()
        valid_pixels = tf.reduce_sum(tf.cast(tf.not_equal(labels, ignore_label), tf.float32))
        # The loss is normalised by the valid pixels of the global batch, whatever the replica count.
        global_valid_pixels = replica_context.all_reduce(tf.distribute.ReduceOp.SUM, valid_pixels)
        loss, cross_entropy, gradients = loss_and_gradients(
            images, labels, global_valid_pixels, replica_context.num_replicas_in_sync
        )
        optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
        return loss, cross_entropy

    @tf.function
    def train_loop(iterator: Iterator, num_steps: tf.Tensor) -> dict:
        loss_total = tf.constant(0.0)
        cross_entropy_total = tf.constant(0.0)
        all_finite = tf.constant(True)
        for _ in tf.range(num_steps):
            images, labels = next(iterator)
            per_replica_loss, per_replica_cross_entropy = strategy.run(replica_step, args=(images, labels))
            loss = strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica_loss, axis=None)
            cross_entropy = strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica_cross_entropy, axis=None)
            global_step.assign_add(1)
            all_finite = tf.logical_and(all_finite, tf.math.is_finite(loss))
            loss_total += loss
            cross_entropy_total += cross_entropy
        count = tf.cast(num_steps, tf.float32)
        return {
            "loss": loss_total / count,
            "cross_entropy": cross_entropy_total / count,
            "learning_rate": tf.identity(optimizer.learning_rate),
            "all_finite": all_finite,
        }

    return train_loop


def make_eval_loop(
    strategy: tf.distribute.Strategy,
    model: keras.Model,
    num_classes: int,
    ignore_label: int,
    inference_config: InferenceConfig | None = None,
) -> EvalLoop:
    """Returns `eval_loop(iterator, num_steps)`: the confusion matrix (int64) summed over replicas and batches.

    Each replica predicts its batch at the batch's own (padded) size as `inference_config` says (whole image by
    default; sliding window, multi-scale, flip), so labels are compared at their original resolution.
    """

    def replica_step(images: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
        logits = predict_logits(lambda x: model(x, training=False), images, num_classes, inference_config)
        predictions = tf.argmax(logits, axis=-1, output_type=tf.int32)
        return metrics.confusion_matrix(labels, predictions, num_classes, ignore_label)

    @tf.function
    def eval_loop(iterator: Iterator, num_steps: tf.Tensor) -> tf.Tensor:
        matrix = tf.zeros([num_classes, num_classes], tf.int64)
        for _ in tf.range(num_steps):
            images, labels = next(iterator)
            per_replica_matrix = strategy.run(replica_step, args=(images, labels))
            matrix += strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica_matrix, axis=None)
        return matrix

    return eval_loop
