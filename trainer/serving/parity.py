"""The parity report: every exported format's class maps against the SavedModel's, on the same validation images.

Each format (TFLite, ONNX, TF.js) is run by its own runtime and compared with the SavedModel's `serving_default`
on uint8 images [N, H, W, 3]: `pixel_agreement` is the fraction of image pixels with the same class,
`miou_vs_saved_model` the mIoU taking the SavedModel's class map as ground truth, and `miou` / `pixel_accuracy`
are each model's own scores against the labels.
"""

from collections.abc import Mapping

import numpy as np
import tensorflow as tf

from trainer.core import metrics
from trainer.serving import preprocessing
from trainer.serving.saved_model import IMAGES_INPUT, SERVING_DEFAULT

# Batches of this many images go through the SavedModel while measuring parity.
_SAVED_MODEL_BATCH = 8


def saved_model_class_maps(saved_model_dir: str, images: np.ndarray) -> np.ndarray:
    """Runs the SavedModel's serving_default on uint8 images [N, H, W, 3]; returns class maps int32 [N, H, W]."""
    serve = tf.saved_model.load(saved_model_dir).signatures[SERVING_DEFAULT]
    batches = [
        serve(**{IMAGES_INPUT: tf.constant(images[start : start + _SAVED_MODEL_BATCH])})[preprocessing.CLASS_MAP]
        for start in range(0, len(images), _SAVED_MODEL_BATCH)
    ]
    return np.concatenate([batch.numpy() for batch in batches])


def scores(labels: np.ndarray, class_maps: np.ndarray, num_classes: int, ignore_label: int) -> dict:
    """{miou, pixel_accuracy} of `class_maps` against `labels` (pixels labelled `ignore_label` skipped)."""
    results = metrics.segmentation_metrics(
        metrics.confusion_matrix(labels, class_maps, num_classes, ignore_label).numpy()
    )
    return {"miou": results["miou"], "pixel_accuracy": results["pixel_accuracy"]}


class ParityReport:
    """Collects the rows of the parity report against one SavedModel reference on one set of images.

    Args:
      saved_model_dir: the exported SavedModel.
      images: uint8 [N, H, W, 3].
      labels: int [N, H, W] ground truth, `ignore_label` where unlabelled or padded.
      inside: bool [N, H, W], True on the pixels of the original images (False on padding).
      num_classes: number of classes.
      ignore_label: label value to skip.
    """

    def __init__(
        self,
        saved_model_dir: str,
        images: np.ndarray,
        labels: np.ndarray,
        inside: np.ndarray,
        num_classes: int,
        ignore_label: int,
    ):
        self.images = images
        self._labels, self._inside = labels, inside
        self._num_classes, self._ignore_label = num_classes, ignore_label
        self._reference = saved_model_class_maps(saved_model_dir, images)
        self._reference_as_labels = np.where(inside, self._reference, ignore_label)
        self.report = {
            "num_images": int(len(images)),
            "num_pixels": int(inside.sum()),
            "saved_model": scores(labels, self._reference, num_classes, ignore_label),
        }

    def add(self, format_name: str, variant: str, class_maps: np.ndarray, **extra) -> dict:
        """Adds the row of `format_name`/`variant` for its class maps int [N, H, W]; returns the row.

        `extra` (e.g. size_bytes, runtime, file) is stored with the row.
        """
        inside, reference = self._inside, self._reference
        row = {
            "pixel_agreement": float(np.mean(class_maps[inside] == reference[inside])),
            "miou_vs_saved_model": scores(self._reference_as_labels, class_maps, self._num_classes, self._ignore_label)[
                "miou"
            ],
            **scores(self._labels, class_maps, self._num_classes, self._ignore_label),
            **extra,
        }
        self.report.setdefault(format_name, {})[variant] = row
        return row


def rows(report: Mapping) -> list[tuple[str, str, dict]]:
    """The (format, variant, row) triples of a report, in the order they were added."""
    return [
        (name, variant, row)
        for name, variants in report.items()
        if isinstance(variants, Mapping) and name != "saved_model"
        for variant, row in variants.items()
        if isinstance(row, Mapping) and "pixel_agreement" in row
    ]


def format_parity(report: Mapping) -> str:
    """The parity report as a table, one row per format and variant (e.g. tflite int8, onnx float32)."""
    lines = [
        f"Parity with the SavedModel on {report['num_images']} validation images "
        f"({report['num_pixels']} pixels); SavedModel mIoU {report['saved_model']['miou']:.4f}",
        f"  {'format':>7s}  {'variant':>18s}  {'runtime':>23s}  {'agreement':>9s}  {'mIoU vs SM':>10s}  "
        f"{'mIoU':>6s}  {'size':>10s}",
    ]
    for name, variant, row in rows(report):
        lines.append(
            f"  {name:>7s}  {variant:>18s}  {row.get('runtime', ''):>23s}  {row['pixel_agreement']:9.4%}  "
            f"{row['miou_vs_saved_model']:10.4f}  {row['miou']:6.4f}  {row.get('size_bytes', 0):10,d}"
        )
    return "\n".join(lines)
