"""The compiled evaluation loop: predictions of every replica reduced into one confusion matrix."""

from collections.abc import Callable, Iterator

import tensorflow as tf
import tf_keras as keras

from trainer.core import metrics
from trainer.core.inference import InferenceConfig, predict_logits

EvalLoop = Callable[[Iterator, tf.Tensor], tf.Tensor]


def make_eval_loop(
    strategy: tf.distribute.Strategy,
    model: keras.Model,
    num_classes: int,
    ignore_label: int,
    inference_config: InferenceConfig,
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
