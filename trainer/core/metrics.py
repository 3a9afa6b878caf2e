"""Segmentation metrics from one dataset-wide confusion matrix."""

import numpy as np
import tensorflow as tf

# The scalar metrics `segmentation_metrics` returns; all are "higher is better" (any can pick the best checkpoint).
SCALAR_METRICS = ("miou", "macc", "pixel_accuracy", "fwiou", "mf1", "mprecision", "mrecall")
# The per-class metrics, by report key and the short name of their TensorBoard tags.
PER_CLASS_METRICS = {
    "per_class_iou": "iou",
    "per_class_accuracy": "accuracy",
    "per_class_f1": "f1",
    "per_class_precision": "precision",
    "per_class_recall": "recall",
}


def confusion_matrix(labels: tf.Tensor, predictions: tf.Tensor, num_classes: int, ignore_label: int) -> tf.Tensor:
    """Counts (label, prediction) pairs over the pixels whose label is not `ignore_label`.

    Static-shaped (no boolean masking), so it compiles under XLA and sums across replicas.

    Returns:
      int64 [num_classes, num_classes]; rows are labels, columns predictions.
    """
    labels = tf.reshape(tf.cast(labels, tf.int32), [-1])
    predictions = tf.reshape(tf.cast(predictions, tf.int32), [-1])
    valid = tf.not_equal(labels, ignore_label)
    index = tf.where(valid, labels * num_classes + predictions, tf.zeros_like(labels))
    counts = tf.math.unsorted_segment_sum(tf.cast(valid, tf.int64), index, num_classes * num_classes)
    return tf.reshape(counts, [num_classes, num_classes])


def segmentation_metrics(matrix: np.ndarray) -> dict:
    """Computes every metric of a confusion matrix (rows labels, columns predictions), as mmsegmentation does.

    - `per_class_iou`: TP / (TP + FP + FN); NaN for a class absent from both labels and predictions.
    - `miou`: the mean of the per-class IoUs that are not NaN.
    - `per_class_accuracy`: TP / (pixels labelled with the class); NaN for a class absent from the labels.
    - `macc`: the mean of the per-class accuracies that are not NaN.
    - `pixel_accuracy` (mmsegmentation's aAcc): correctly classified pixels / all counted pixels.
    - `fwiou`: the per-class IoUs weighted by each class's share of the labelled pixels.
    - `per_class_f1`: the F1 score, equal to the Dice coefficient, 2 TP / (2 TP + FP + FN); NaN for a class
      absent from both labels and predictions. `mf1`: their mean over the numbers.
    - `per_class_precision`: TP / (pixels predicted as the class); NaN for a class never predicted.
    - `per_class_recall`: TP / (pixels labelled with the class), the per-class accuracy. `mprecision`,
      `mrecall`: their means over the numbers.

    Returns:
      The metrics above (per-class ones as lists in class order), `absent_classes` (class ids absent from labels
      and predictions, left out of the means), `num_pixels` and the `confusion_matrix` as a list of lists.
    """
    matrix = np.asarray(matrix, dtype=np.int64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"segmentation_metrics: expected a square confusion matrix, received shape {matrix.shape}")
    true_positives = np.diag(matrix).astype(np.float64)
    label_pixels = matrix.sum(axis=1).astype(np.float64)
    predicted_pixels = matrix.sum(axis=0).astype(np.float64)
    union = label_pixels + predicted_pixels - true_positives
    total = float(matrix.sum())
    with np.errstate(divide="ignore", invalid="ignore"):
        per_class_iou = np.where(union > 0, true_positives / union, np.nan)
        per_class_accuracy = np.where(label_pixels > 0, true_positives / label_pixels, np.nan)
        per_class_f1 = np.where(union > 0, 2 * true_positives / (label_pixels + predicted_pixels), np.nan)
        per_class_precision = np.where(predicted_pixels > 0, true_positives / predicted_pixels, np.nan)
    has_labels = label_pixels > 0
    # A class with labelled pixels always has a union > 0, so its IoU is a number.
    frequency_weighted_iou = np.sum(label_pixels[has_labels] / total * per_class_iou[has_labels]) if total else np.nan
    return {
        "miou": _nanmean(per_class_iou),
        "macc": _nanmean(per_class_accuracy),
        "pixel_accuracy": float(true_positives.sum() / total) if total > 0 else float("nan"),
        "fwiou": float(frequency_weighted_iou),
        "mf1": _nanmean(per_class_f1),
        "mprecision": _nanmean(per_class_precision),
        "mrecall": _nanmean(per_class_accuracy),
        "per_class_iou": per_class_iou.tolist(),
        "per_class_accuracy": per_class_accuracy.tolist(),
        "per_class_f1": per_class_f1.tolist(),
        "per_class_precision": per_class_precision.tolist(),
        "per_class_recall": per_class_accuracy.tolist(),
        "absent_classes": np.flatnonzero(np.isnan(per_class_iou)).tolist(),
        "num_pixels": int(total),
        "confusion_matrix": matrix.tolist(),
    }


def _nanmean(values: np.ndarray) -> float:
    # np.nanmean, as mmsegmentation uses (same summation order), without its warning when every value is NaN.
    return float(np.nanmean(values)) if not np.isnan(values).all() else float("nan")
