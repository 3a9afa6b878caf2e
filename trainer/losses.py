"""Segmentation losses, normalised by the valid pixels of the global batch."""

import tensorflow as tf


def pixel_cross_entropy_sum(labels: tf.Tensor, logits: tf.Tensor, ignore_label: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Sums softmax cross-entropy over the pixels whose label is not `ignore_label`.

    Args:
      labels: int [batch, height, width] class ids, or `ignore_label`.
      logits: float [batch, height, width, num_classes].
      ignore_label: label value that contributes nothing.

    Returns:
      (sum of per-pixel losses, number of valid pixels), both float32 scalars. Dividing the sum by the
      valid-pixel count of the *global* batch makes the loss independent of how the batch is split.
    """
    labels = tf.cast(labels, tf.int32)
    valid = tf.not_equal(labels, ignore_label)
    # Ignored pixels get class 0 so the op sees a legal id; their loss is masked out below.
    safe_labels = tf.where(valid, labels, tf.zeros_like(labels))
    per_pixel = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=safe_labels, logits=tf.cast(logits, tf.float32))
    valid = tf.cast(valid, tf.float32)
    return tf.reduce_sum(per_pixel * valid), tf.reduce_sum(valid)


def l2_kernel_penalty(variables: list[tf.Variable]) -> tf.Tensor:
    """Returns sum(w**2) over convolution and dense kernels (not biases nor batch-norm parameters)."""
    kernels = [v for v in variables if "kernel" in v.name]
    if not kernels:
        return tf.constant(0.0)
    return tf.add_n([tf.reduce_sum(tf.square(tf.cast(v, tf.float32))) for v in kernels])
