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
    iou, accuracy, frequency, f1, precision = [], [], [], [], []
    for c in range(num_classes):
        is_label = (labels == c) & valid
        is_prediction = (predictions == c) & valid
        intersection = np.sum(is_label & is_prediction)
        union = np.sum(is_label | is_prediction)
        iou.append(intersection / union if union else np.nan)
        accuracy.append(intersection / np.sum(is_label) if np.sum(is_label) else np.nan)
        frequency.append(np.sum(is_label) / total)
        f1.append(2 * intersection / (np.sum(is_label) + np.sum(is_prediction)) if union else np.nan)
        precision.append(intersection / np.sum(is_prediction) if np.sum(is_prediction) else np.nan)
    iou, accuracy, frequency = np.array(iou), np.array(accuracy), np.array(frequency)
    f1, precision = np.array(f1), np.array(precision)
    labelled = frequency > 0
    return {
        "per_class_iou": iou,
        "per_class_accuracy": accuracy,
        "miou": np.nanmean(iou),
        "macc": np.nanmean(accuracy),
        "pixel_accuracy": np.sum((labels == predictions) & valid) / total,
        "fwiou": np.sum(frequency[labelled] * iou[labelled]),
        "per_class_f1": f1,
        "per_class_precision": precision,
        "per_class_recall": accuracy,
        "mf1": np.nanmean(f1),
        "mprecision": np.nanmean(precision),
        "mrecall": np.nanmean(accuracy),
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

    for name in metrics.PER_CLASS_METRICS:
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
    # (mrecall is macc by definition: the recall of a class is its accuracy.)
    distinct = [name for name in metrics.SCALAR_METRICS if name != "mrecall"]
    assert len({result[name] for name in distinct}) == len(distinct) and result["mrecall"] == result["macc"]


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


def test_f1_precision_recall_match_numpy():
    rng = np.random.default_rng(7)
    matrix = rng.integers(0, 50, size=(4, 4))
    matrix[2, :] = 0  # a class never labelled, but predicted
    matrix[3, :] = 0
    matrix[:, 3] = 0  # a class neither labelled nor predicted
    result = metrics.segmentation_metrics(matrix)
    tp = np.diag(matrix).astype(float)
    labelled, predicted = matrix.sum(axis=1), matrix.sum(axis=0)
    for c in range(3):
        f1 = 2 * tp[c] / (labelled[c] + predicted[c])
        precision = tp[c] / predicted[c]
        assert result["per_class_f1"][c] == pytest.approx(f1, abs=0, rel=1e-12)
        assert result["per_class_precision"][c] == pytest.approx(precision, abs=0, rel=1e-12)
    assert result["per_class_recall"][:2] == pytest.approx(tp[:2] / labelled[:2], rel=1e-12)
    assert math.isnan(result["per_class_recall"][2]) and math.isnan(result["per_class_f1"][3])
    assert math.isnan(result["per_class_precision"][3])
    assert result["mf1"] == pytest.approx(np.mean(result["per_class_f1"][:3]), rel=1e-12)
    assert result["mprecision"] == pytest.approx(np.mean(result["per_class_precision"][:3]), rel=1e-12)
    assert result["mrecall"] == pytest.approx(np.mean(result["per_class_recall"][:2]), rel=1e-12)
    # F1 is the Dice coefficient, 2 IoU / (1 + IoU), class by class.
    iou = np.asarray(result["per_class_iou"][:3])
    np.testing.assert_allclose(result["per_class_f1"][:3], 2 * iou / (1 + iou), rtol=1e-12)
