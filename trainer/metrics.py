"""Segmentation metrics from a dataset-wide confusion matrix."""

import numpy as np
import tensorflow as tf


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
    """Computes mIoU, per-class IoU and pixel accuracy from a confusion matrix (rows labels, columns predictions).

    A class absent from both labels and predictions has IoU NaN and is left out of the mean, as in
    mmsegmentation and Model Garden.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    true_positives = np.diag(matrix)
    union = matrix.sum(axis=0) + matrix.sum(axis=1) - true_positives
    with np.errstate(divide="ignore", invalid="ignore"):
        per_class_iou = np.where(union > 0, true_positives / union, np.nan)
    total = matrix.sum()
    present = ~np.isnan(per_class_iou)
    return {
        "miou": float(np.mean(per_class_iou[present])) if present.any() else float("nan"),
        "per_class_iou": per_class_iou.tolist(),
        "pixel_accuracy": float(true_positives.sum() / total) if total > 0 else float("nan"),
        "num_absent_classes": int((~present).sum()),
        "num_pixels": int(total),
    }
