"""An evaluation's report: where its JSON goes, how it is made JSON-safe, and its console table."""

import json
import math
import os

import tensorflow as tf

from trainer.observe import summaries


def report_path(model_dir: str, step: int) -> str:
    """The JSON report of the evaluation at `step`."""
    return os.path.join(model_dir, summaries.EVAL_SUBDIR, f"metrics_step_{step:08d}.json")


def is_number(value: float | None) -> bool:
    return value is not None and not math.isnan(value)


def json_ready(value):
    """NaN becomes null (JSON has no NaN); containers are converted recursively."""
    if isinstance(value, dict):
        return {key: json_ready(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(item) for item in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def saved_report(model_dir: str, step: int) -> dict | None:
    """The report already written for `step`, or None."""
    path = report_path(model_dir, step)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        return json.loads(f.read())


def format_report(report: dict) -> str:
    """Returns the console table of a report: one row per class, then the summary metrics."""
    inference = report["inference"]
    how = "sliding window" if inference["mode"] == "slide" else "whole image"
    scales = ", ".join(f"{s:g}" for s in inference["scales"])
    lines = [
        f"Evaluation at step {report['step']} ({report['checkpoint'] or 'current weights'}; {how}, scales {scales}"
        f"{', flip' if inference['flip'] else ''}): {report['num_examples']} images, {report['num_pixels']:,} "
        f"labelled pixels, {report['seconds']:.1f} s",
    ]
    width = max(12, *(len(name) for name in report["per_class_iou"]))
    columns = {"IoU": "per_class_iou", "Acc": "per_class_accuracy", "F1": "per_class_f1"}
    columns.update({"Prec": "per_class_precision", "Recall": "per_class_recall"})
    # Reports written before the F1/precision/recall columns existed still print.
    columns = {label: key for label, key in columns.items() if key in report}
    lines.append(f"  {'class':<{width}}  " + "  ".join(f"{label:>7}" for label in columns))
    for name in report["per_class_iou"]:
        values = [report[key][name] for key in columns.values()]
        cells = [f"{v:7.4f}" if v is not None else f"{'nan':>7}" for v in values]
        note = "  (absent)" if name in report["absent_classes"] else ""
        lines.append(f"  {name:<{width}}  " + "  ".join(cells) + note)
    summary = {"mIoU": "miou", "mAcc": "macc", "aAcc": "pixel_accuracy", "fwIoU": "fwiou"}
    more = {"mF1": "mf1", "mPrec": "mprecision", "mRecall": "mrecall"}
    summary.update({label: key for label, key in more.items() if key in report})
    lines.append("  " + "  ".join(f"{label} {report[key]:.4f}" for label, key in summary.items()))
    if report["absent_classes"]:
        absent = ", ".join(report["absent_classes"])
        lines.append(
            f"  {len(report['absent_classes'])} class(es) absent from both labels and predictions ({absent}): "
            "IoU and accuracy are NaN and left out of mIoU and mAcc."
        )
    return "\n".join(lines)
