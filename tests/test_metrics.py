"""Metrics against a plain NumPy computation."""

import numpy as np
import tensorflow as tf

from trainer import metrics

IGNORE = 255


def _numpy_confusion(labels, predictions, num_classes):
    matrix = np.zeros([num_classes, num_classes], np.int64)
    for label, prediction in zip(labels.ravel(), predictions.ravel(), strict=True):
        if label != IGNORE:
            matrix[label, prediction] += 1
    return matrix


def _random_case(seed, num_classes=6, absent=(4,)):
    rng = np.random.default_rng(seed)
    present = [c for c in range(num_classes) if c not in absent]
    labels = rng.choice(present, size=(3, 17, 13)).astype(np.int32)
    predictions = rng.choice(present, size=labels.shape).astype(np.int32)
    labels[rng.random(labels.shape) < 0.2] = IGNORE
    return labels, predictions


def test_confusion_matrix_matches_numpy_and_ignores_label():
    labels, predictions = _random_case(0)
    got = metrics.confusion_matrix(tf.constant(labels), tf.constant(predictions), 6, IGNORE).numpy()
    np.testing.assert_array_equal(got, _numpy_confusion(labels, predictions, 6))
    assert got.sum() == np.count_nonzero(labels != IGNORE)


def test_metrics_match_numpy_definitions_with_absent_class():
    labels, predictions = _random_case(1)
    matrix = _numpy_confusion(labels, predictions, 6)
    result = metrics.segmentation_metrics(matrix)
    expected_iou = []
    for c in range(6):
        tp = np.sum((labels == c) & (predictions == c))
        union = np.sum(((labels == c) | (predictions == c)) & (labels != IGNORE))
        expected_iou.append(tp / union if union else np.nan)
    np.testing.assert_allclose(result["per_class_iou"], expected_iou, rtol=0, atol=1e-12)
    assert np.isnan(result["per_class_iou"][4]) and result["num_absent_classes"] == 1
    assert result["miou"] == np.nanmean(expected_iou)
    valid = labels != IGNORE
    assert result["pixel_accuracy"] == np.sum((labels == predictions) & valid) / np.sum(valid)


def test_perfect_prediction_scores_one():
    labels, _ = _random_case(2)
    predictions = np.where(labels == IGNORE, 0, labels)
    matrix = metrics.confusion_matrix(tf.constant(labels), tf.constant(predictions), 6, IGNORE).numpy()
    result = metrics.segmentation_metrics(matrix)
    assert result["miou"] == 1.0 and result["pixel_accuracy"] == 1.0
