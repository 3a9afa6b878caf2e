"""Loss normalisation and the ignore label."""

import numpy as np
import tensorflow as tf

from trainer import losses


def test_ignored_pixels_contribute_nothing():
    rng = np.random.default_rng(0)
    logits = tf.constant(rng.normal(size=(2, 5, 5, 3)), tf.float32)
    labels = rng.integers(0, 3, size=(2, 5, 5)).astype(np.int32)
    labels[0, :2] = 255
    loss_sum, count = losses.pixel_cross_entropy_sum(tf.constant(labels), logits, 255)
    valid = labels != 255
    per_pixel = tf.nn.sparse_softmax_cross_entropy_with_logits(np.where(valid, labels, 0), logits).numpy()
    np.testing.assert_allclose(loss_sum.numpy(), per_pixel[valid].sum(), rtol=1e-6)
    assert count.numpy() == valid.sum()


def test_global_normalisation_is_independent_of_the_split():
    rng = np.random.default_rng(1)
    logits = tf.constant(rng.normal(size=(4, 6, 6, 4)), tf.float32)
    labels = rng.integers(0, 4, size=(4, 6, 6)).astype(np.int32)
    labels[rng.random(labels.shape) < 0.3] = 255
    whole_sum, whole_count = losses.pixel_cross_entropy_sum(labels, logits, 255)
    parts = [losses.pixel_cross_entropy_sum(labels[i : i + 1], logits[i : i + 1], 255) for i in range(4)]
    global_count = sum(count for _, count in parts)
    split_loss = sum(part_sum / global_count for part_sum, _ in parts)
    np.testing.assert_allclose(split_loss.numpy(), (whole_sum / whole_count).numpy(), rtol=1e-6)


def test_l2_penalty_counts_only_kernels():
    kernel = tf.Variable([[1.0, 2.0]], name="conv/kernel")
    bias = tf.Variable([3.0], name="conv/bias")
    assert losses.l2_kernel_penalty([kernel, bias]).numpy() == 5.0
