"""Losses against NumPy: normalisation, the ignore label, class weights, label smoothing, hard-pixel mining."""

import numpy as np
import pytest
import tensorflow as tf

from trainer.common.errors import UserInputError
from trainer.core import losses


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


def _numpy_log_softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _numpy_pixel_losses(labels, logits, class_weights=None, label_smoothing=0.0, ignore_label=255):
    """Reference per-pixel losses and weights, written out with a dense smoothed target."""
    num_classes = logits.shape[-1]
    valid = labels != ignore_label
    safe = np.where(valid, labels, 0)
    target = (1 - label_smoothing) * np.eye(num_classes)[safe] + label_smoothing / num_classes
    per_pixel = -(target * _numpy_log_softmax(logits)).sum(axis=-1)
    weights = valid * (1.0 if class_weights is None else np.asarray(class_weights)[safe])
    return per_pixel * weights, weights


def _example(seed=2, shape=(3, 6, 5, 4)):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=shape).astype(np.float32) * 3
    labels = rng.integers(0, shape[-1], size=shape[:3]).astype(np.int32)
    labels[rng.random(labels.shape) < 0.25] = 255
    return labels, logits


def test_class_weights_and_label_smoothing_match_numpy():
    labels, logits = _example()
    weights = (0.5, 2.0, 1.0, 3.0)
    loss = losses.SegmentationLoss(class_weights=weights, label_smoothing=0.1)
    expected, pixel_weights = _numpy_pixel_losses(labels, logits, weights, 0.1)
    np.testing.assert_allclose(loss.loss_sum(labels, logits, 255).numpy(), expected.sum(), rtol=1e-5)
    assert loss.normalizer(labels, 255).numpy() == (pixel_weights > 0).sum() == (labels != 255).sum()


def test_a_zero_class_weight_acts_as_ignore():
    labels, logits = _example(seed=3)
    loss = losses.SegmentationLoss(class_weights=(0.0, 1.0, 1.0, 1.0))
    assert loss.normalizer(labels, 255).numpy() == ((labels != 255) & (labels != 0)).sum()


def test_top_k_percent_pixels_keeps_each_images_hardest_pixels_like_numpy():
    labels, logits = _example(seed=4)
    loss = losses.SegmentationLoss(top_k_percent_pixels=0.3, label_smoothing=0.05)
    per_pixel, pixel_weights = _numpy_pixel_losses(labels, logits, label_smoothing=0.05)
    k = round(0.3 * 6 * 5)
    expected_sum, expected_count = 0.0, 0
    for image_losses, image_weights in zip(per_pixel, pixel_weights, strict=True):
        contributing = np.sort(image_losses[image_weights > 0])[::-1]
        expected_sum += contributing[:k].sum()
        expected_count += min(k, contributing.size)
    np.testing.assert_allclose(loss.loss_sum(labels, logits, 255).numpy(), expected_sum, rtol=1e-5)
    assert loss.normalizer(labels, 255).numpy() == expected_count


def test_top_k_with_fewer_valid_pixels_than_k_keeps_only_the_valid_ones():
    labels, logits = _example(seed=5, shape=(1, 4, 4, 3))
    labels[:] = 255
    labels[0, 0, :3] = [0, 1, 2]
    loss = losses.SegmentationLoss(top_k_percent_pixels=0.5)  # k = 8 > 3 valid pixels
    per_pixel, _ = _numpy_pixel_losses(labels, logits)
    np.testing.assert_allclose(loss.loss_sum(labels, logits, 255).numpy(), per_pixel[0, 0, :3].sum(), rtol=1e-5)
    assert loss.normalizer(labels, 255).numpy() == 3


def test_global_normaliser_makes_top_k_independent_of_the_split():
    labels, logits = _example(seed=6, shape=(4, 5, 5, 3))
    loss = losses.SegmentationLoss(top_k_percent_pixels=0.4, class_weights=(1.0, 0.5, 2.0))
    whole = loss.loss_sum(labels, logits, 255) / loss.normalizer(labels, 255)
    global_count = sum(loss.normalizer(labels[i : i + 1], 255) for i in range(4))
    split = sum(loss.loss_sum(labels[i : i + 1], logits[i : i + 1], 255) / global_count for i in range(4))
    np.testing.assert_allclose(split.numpy(), whole.numpy(), rtol=1e-6)


def test_loss_settings_are_validated_with_the_binding_named():
    with pytest.raises(UserInputError, match=r"loss.top_k_percent_pixels: expected a fraction in \(0, 1\]"):
        losses.SegmentationLoss(top_k_percent_pixels=20)
    with pytest.raises(UserInputError, match="loss.label_smoothing"):
        losses.SegmentationLoss(label_smoothing=1.0)
    with pytest.raises(UserInputError, match="loss.class_weights: expected a non-empty tuple of non-negative"):
        losses.SegmentationLoss(class_weights=(1.0, -1.0))
    with pytest.raises(UserInputError, match=r"loss.class_weights: expected 4 weights .* received 3"):
        losses.SegmentationLoss(class_weights=(1.0, 1.0, 1.0)).check_num_classes(4)
