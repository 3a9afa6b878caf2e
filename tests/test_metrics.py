"""Every metric against a plain NumPy computation on the labels and predictions themselves."""

import math

import numpy as np
import pytest
import tensorflow as tf

from trainer.core import metrics

IGNORE = 255


def _numpy_confusion(labels, predictions, num_classes):
    matrix = np.zeros([num_classes, num_classes], np.int64)
    for label, prediction in zip(labels.ravel(), predictions.ravel(), strict=True):
        if label != IGNORE:
            matrix[label, prediction] += 1
    return matrix


def _random_case(seed, num_classes=6, absent=(4,), predicted_only=()):
    """Random labels/predictions; `absent` classes appear in neither, `predicted_only` only in predictions."""
    rng = np.random.default_rng(seed)
    labelled = [c for c in range(num_classes) if c not in absent and c not in predicted_only]
    predicted = [c for c in range(num_classes) if c not in absent]
    labels = rng.choice(labelled, size=(3, 17, 13)).astype(np.int32)
    # Mostly right, so the metrics are far from zero and differ between classes.
    predictions = np.where(rng.random(labels.shape) < 0.6, labels, rng.choice(predicted, size=labels.shape))
    predictions = predictions.astype(np.int32)
    labels[rng.random(labels.shape) < 0.2] = IGNORE
    return labels, predictions


def _reference(labels, predictions, num_classes):
    """The metrics straight from pixel masks, as the definitions read."""
    valid = labels != IGNORE
    total = np.sum(valid)
    iou, accuracy, frequency = [], [], []
    for c in range(num_classes):
        is_label = (labels == c) & valid
        is_prediction = (predictions == c) & valid
        intersection = np.sum(is_label & is_prediction)
        union = np.sum(is_label | is_prediction)
        iou.append(intersection / union if union else np.nan)
        accuracy.append(intersection / np.sum(is_label) if np.sum(is_label) else np.nan)
        frequency.append(np.sum(is_label) / total)
    iou, accuracy, frequency = np.array(iou), np.array(accuracy), np.array(frequency)
    labelled = frequency > 0
    return {
        "per_class_iou": iou,
        "per_class_accuracy": accuracy,
        "miou": np.nanmean(iou),
        "macc": np.nanmean(accuracy),
        "pixel_accuracy": np.sum((labels == predictions) & valid) / total,
        "fwiou": np.sum(frequency[labelled] * iou[labelled]),
    }


def test_confusion_matrix_matches_numpy_and_ignores_label():
    labels, predictions = _random_case(0)
    got = metrics.confusion_matrix(tf.constant(labels), tf.constant(predictions), 6, IGNORE).numpy()
    np.testing.assert_array_equal(got, _numpy_confusion(labels, predictions, 6))
    assert got.sum() == np.count_nonzero(labels != IGNORE)


@pytest.mark.parametrize(
    "seed, num_classes, absent, predicted_only",
    [(1, 6, (4,), ()), (2, 12, (0, 7), (3,)), (3, 21, (5, 6, 20), (9, 10))],
)
def test_every_metric_equals_the_numpy_definition_exactly(seed, num_classes, absent, predicted_only):
    labels, predictions = _random_case(seed, num_classes, absent, predicted_only)
    matrix = metrics.confusion_matrix(tf.constant(labels), tf.constant(predictions), num_classes, IGNORE).numpy()
    result = metrics.segmentation_metrics(matrix)
    expected = _reference(labels, predictions, num_classes)

    for name in ("per_class_iou", "per_class_accuracy"):
        np.testing.assert_array_equal(np.array(result[name]), expected[name], err_msg=name)
    for name in metrics.SCALAR_METRICS:
        assert result[name] == expected[name], name
    # Absent from labels and predictions: NaN, left out of the means and reported.
    assert result["absent_classes"] == sorted(absent)
    for c in absent:
        assert math.isnan(result["per_class_iou"][c]) and math.isnan(result["per_class_accuracy"][c])
    # Predicted but never labelled: IoU 0 (it counts against mIoU), accuracy undefined.
    for c in predicted_only:
        assert result["per_class_iou"][c] == 0.0 and math.isnan(result["per_class_accuracy"][c])
    assert result["num_pixels"] == np.count_nonzero(labels != IGNORE)
    assert result["confusion_matrix"] == matrix.tolist()
    # The metrics are not all trivially equal, so the comparison above could have failed.
    assert len({result[name] for name in metrics.SCALAR_METRICS}) == len(metrics.SCALAR_METRICS)


def test_perfect_prediction_scores_one():
    labels, _ = _random_case(4)
    predictions = np.where(labels == IGNORE, 0, labels)
    matrix = metrics.confusion_matrix(tf.constant(labels), tf.constant(predictions), 6, IGNORE).numpy()
    result = metrics.segmentation_metrics(matrix)
    for name in metrics.SCALAR_METRICS:
        assert result[name] == 1.0, name


def test_an_empty_matrix_gives_nan_not_an_error():
    result = metrics.segmentation_metrics(np.zeros([3, 3], np.int64))
    assert all(math.isnan(result[name]) for name in metrics.SCALAR_METRICS)
    assert result["absent_classes"] == [0, 1, 2] and result["num_pixels"] == 0


def test_a_non_square_matrix_is_rejected():
    with pytest.raises(ValueError, match="square"):
        metrics.segmentation_metrics(np.zeros([3, 4], np.int64))
