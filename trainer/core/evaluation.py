"""Evaluation: the dataset-wide confusion matrix under any strategy, its report, the best checkpoint, continuous eval.

Outputs of an evaluation at step N (the chief writes them): a per-class table on the console,
`model_dir/eval/metrics_step_<N>.json` with every metric, TensorBoard scalars in `model_dir/eval/`, and — when
the chosen metric (`evaluation.best_metric`) improves — a copy of the checkpoint in `model_dir/best/` with an
`info.json` (step, metric, value).
"""

import contextlib
import json
import math
import os
import time
from collections.abc import Callable

import numpy as np
import tensorflow as tf
import tf_keras as keras
from absl import logging

from trainer.cluster.tasks import TaskInfo
from trainer.common.errors import UserInputError
from trainer.common.files import write_atomically
from trainer.core import eval_loop, metrics
from trainer.core.config import EvalConfig
from trainer.core.inference import InferenceConfig
from trainer.data.info import DatasetInfo
from trainer.data.pipeline import InputPipeline
from trainer.observe import summaries
from trainer.observe.eval_images import EvalImages
from trainer.storage import checkpoints
from trainer.storage.checkpoints import BEST_SUBDIR

BEST_INFO_FILE = "info.json"
# Where continuous evaluation copies a checkpoint before reading it, so training may delete its own copy.
_CANDIDATE_SUBDIR = ".candidate"


def report_path(model_dir: str, step: int) -> str:
    """The JSON report of the evaluation at `step`."""
    return os.path.join(model_dir, summaries.EVAL_SUBDIR, f"metrics_step_{step:08d}.json")


def _is_number(value: float | None) -> bool:
    return value is not None and not math.isnan(value)


def _json_ready(value):
    """NaN becomes null (JSON has no NaN); containers are converted recursively."""
    if isinstance(value, dict):
        return {key: _json_ready(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(item) for item in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


class BestCheckpoint:
    """Keeps a copy of the checkpoint that scored highest on one metric in `directory`, with an `info.json`.

    The copy is made without a moment where `best/` is inconsistent: the new checkpoint's files are copied
    under temporary names and renamed into place (their names carry the step, so they never overwrite the
    previous best's), then the `checkpoint` state file and `info.json` are each replaced atomically, and only
    then are the previous best's files deleted. `tf.train.latest_checkpoint(directory)` restores it.
    """

    def __init__(self, directory: str, metric: str):
        self.directory = directory
        self.metric = metric
        self.info = self._load()

    def _load(self) -> dict | None:
        path = os.path.join(self.directory, BEST_INFO_FILE)
        if not tf.io.gfile.exists(path):
            return None
        with tf.io.gfile.GFile(path) as f:
            info = json.loads(f.read())
        if info.get("metric") != self.metric:
            logging.warning(
                "%s holds the best checkpoint by %s (step %s); evaluation.best_metric is now %s, so the next "
                "evaluation replaces it.",
                self.directory,
                info.get("metric"),
                info.get("step"),
                self.metric,
            )
            return None
        return info

    def is_better(self, value: float | None) -> bool:
        """Whether `value` of the metric beats the kept checkpoint (strictly; NaN never does)."""
        return _is_number(value) and (self.info is None or value > self.info["value"])

    def update(self, report: dict, checkpoint_path: str) -> bool:
        """Copies `checkpoint_path` (a prefix) into the directory if `report` beats the kept one; returns whether."""
        value = report[self.metric]
        if not self.is_better(value):
            if self.info is not None:
                logging.info("Best %s stays %.4f (step %d).", self.metric, self.info["value"], self.info["step"])
            return False
        copy = checkpoints.copy_checkpoint(checkpoint_path, self.directory)
        prefix = os.path.basename(copy)
        state = f'model_checkpoint_path: "{prefix}"\nall_model_checkpoint_paths: "{prefix}"\n'
        write_atomically(os.path.join(self.directory, "checkpoint"), state)
        self.info = {
            "step": report["step"],
            "metric": self.metric,
            "value": value,
            "checkpoint": prefix,
            "source": report["checkpoint"],
        }
        write_atomically(os.path.join(self.directory, BEST_INFO_FILE), json.dumps(self.info, indent=2) + "\n")
        # Only now that nothing points at them: the previous best's files and leftovers of interrupted copies.
        keep = {
            "checkpoint",
            BEST_INFO_FILE,
            _CANDIDATE_SUBDIR,
            *(os.path.basename(f) for f in checkpoints.checkpoint_files(copy)),
        }
        for name in tf.io.gfile.listdir(self.directory):
            if name.rstrip("/") not in keep:
                tf.io.gfile.remove(os.path.join(self.directory, name))
        logging.info(
            "New best %s %.4f at step %d: copied %s to %s.", self.metric, value, report["step"], prefix, self.directory
        )
        return True


class Evaluator:
    """Evaluates a model on the whole eval split under its strategy, and reports the result.

    Every replica predicts its share of each global batch (whole image, sliding window and/or TTA as
    `inference` says) at the padded eval size; padding pixels carry the ignore label, so predictions are
    compared with the labels at their original resolution and the final, partly padded, batch counts every
    example exactly once.
    """

    def __init__(
        self,
        strategy: tf.distribute.Strategy,
        model: keras.Model,
        dataset_info: DatasetInfo,
        input_pipeline: InputPipeline,
        eval_config: EvalConfig,
        model_dir: str,
        task: TaskInfo,
        writer: tf.summary.SummaryWriter,
        inference_config: InferenceConfig,
        weights_context: Callable[[], contextlib.AbstractContextManager] | None = None,
        eval_images: EvalImages | None = None,
    ):
        self.strategy = strategy
        self.info = dataset_info
        self.input_pipeline = input_pipeline
        self.eval_config = eval_config
        self.model_dir = model_dir
        self.task = task
        self.writer = writer
        self.inference_config = inference_config.with_default_crop(input_pipeline.crop_size)
        self._eval_images = eval_images
        self._model = model
        self.best = BestCheckpoint(os.path.join(model_dir, BEST_SUBDIR), eval_config.best_metric)
        # Swaps the weights to evaluate in (e.g. the EMA averages) around every evaluation.
        self._weights_context = weights_context or contextlib.nullcontext
        self._eval_loop = eval_loop.make_eval_loop(
            strategy, model, dataset_info.num_classes, dataset_info.ignore_label, self.inference_config
        )

    def _dataset(self, input_context: tf.distribute.InputContext) -> tf.data.Dataset:
        return self.input_pipeline.eval_dataset(self.info, self.eval_config.global_batch_size, input_context)

    def confusion_matrix(self) -> np.ndarray:
        """Runs the model over the eval split; returns the int64 confusion matrix summed over every replica."""
        dataset = self.strategy.distribute_datasets_from_function(self._dataset)
        num_steps = self.input_pipeline.eval_steps(self.info, self.eval_config.global_batch_size)
        with self._weights_context():
            return self._eval_loop(iter(dataset), tf.constant(num_steps, tf.int32)).numpy()

    def evaluate(self, step: int, checkpoint_path: str | None = None, export_best_from: str | None = None) -> dict:
        """Evaluates the model's current weights; logs the table, writes JSON and TensorBoard (chief).

        Args:
          step: the training step of the weights.
          checkpoint_path: the checkpoint they came from, for the report.
          export_best_from: a checkpoint prefix holding these weights, copied to `best/` if the chosen metric
            improved; None to leave `best/` alone.

        Returns:
          The report: every metric, per-class values keyed by class name (None where NaN), the absent
          classes, pixel and example counts, the inference settings and the confusion matrix.
        """
        if self._eval_images is not None:
            with self._weights_context():
                self._eval_images.write(self.writer, self._model, step)
        started = time.perf_counter()
        matrix = self.confusion_matrix()
        results = metrics.segmentation_metrics(matrix)
        names = self.info.class_names
        report = {
            "step": step,
            "checkpoint": checkpoint_path,
            **{name: results[name] for name in metrics.SCALAR_METRICS},
            "per_class_iou": dict(zip(names, _json_ready(results["per_class_iou"]), strict=True)),
            "per_class_accuracy": dict(zip(names, _json_ready(results["per_class_accuracy"]), strict=True)),
            "absent_classes": [names[c] for c in results["absent_classes"]],
            "num_pixels": results["num_pixels"],
            "num_examples": self.info.num_eval_examples,
            "inference": self.inference_config.describe(),
            "seconds": round(time.perf_counter() - started, 3),
            "confusion_matrix": results["confusion_matrix"],
        }
        if not self.task.is_chief:
            logging.info("Evaluation at step %d: mIoU %.4f (the chief reports the details).", step, report["miou"])
            return report
        logging.info("%s", format_report(report))
        scalars = {name: report[name] for name in metrics.SCALAR_METRICS if _is_number(report[name])}
        for prefix, key in (("iou", "per_class_iou"), ("accuracy", "per_class_accuracy")):
            scalars.update({f"{prefix}/{name}": value for name, value in report[key].items() if value is not None})
        summaries.write_scalars(self.writer, scalars, step)
        path = report_path(self.model_dir, step)
        tf.io.gfile.makedirs(os.path.dirname(path))
        write_atomically(path, json.dumps(_json_ready(report), indent=2) + "\n")
        if export_best_from is not None:
            self.best.update(report, export_best_from)
        return report

    def saved_report(self, step: int) -> dict | None:
        """The report already written for `step`, or None."""
        path = report_path(self.model_dir, step)
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
    lines.append(f"  {'class':<{width}}  {'IoU':>7}  {'Acc':>7}")
    for name, iou in report["per_class_iou"].items():
        accuracy = report["per_class_accuracy"][name]
        cells = [f"{v:7.4f}" if v is not None else f"{'nan':>7}" for v in (iou, accuracy)]
        note = "  (absent)" if name in report["absent_classes"] else ""
        lines.append(f"  {name:<{width}}  {cells[0]}  {cells[1]}{note}")
    summary = {"mIoU": "miou", "mAcc": "macc", "aAcc": "pixel_accuracy", "fwIoU": "fwiou"}
    lines.append("  " + "  ".join(f"{label} {report[key]:.4f}" for label, key in summary.items()))
    if report["absent_classes"]:
        absent = ", ".join(report["absent_classes"])
        lines.append(
            f"  {len(report['absent_classes'])} class(es) absent from both labels and predictions ({absent}): "
            "IoU and accuracy are NaN and left out of mIoU and mAcc."
        )
    return "\n".join(lines)


def continuous_evaluate(
    evaluator: Evaluator,
    restore: Callable[[str], int],
    checkpoint_dir: str,
    final_step: int,
    timeout_secs: float,
) -> dict | None:
    """Evaluates each new checkpoint in `checkpoint_dir` once, as training writes them; stops after `final_step`.

    Safe beside the training job on the same model_dir: it reads `checkpoints/` and writes only `eval/` and
    `best/`. Each checkpoint is first copied to `best/.candidate/` and read from there, so training may
    delete it (train.max_checkpoints_to_keep) at any time. A checkpoint whose report is already in `eval/`
    (say, before this job was restarted) is not evaluated again. If training writes several checkpoints during
    one evaluation, the next one evaluated is the newest.

    Args:
      evaluator: evaluates the model the checkpoints are restored into.
      restore: restores a checkpoint prefix into that model; returns its step.
      checkpoint_dir: the training job's checkpoint directory.
      final_step: the step of the last checkpoint training writes (`train.steps`).
      timeout_secs: how long to wait for a new checkpoint before giving up (`evaluation.continuous_timeout_secs`).

    Returns:
      The report of the last checkpoint evaluated (or already reported), or None if none came.
    """
    if isinstance(evaluator.strategy, tf.distribute.MultiWorkerMirroredStrategy):
        raise UserInputError(
            "--mode=continuous_eval: expected a single-host strategy (one_device, mirrored or tpu), received "
            "--strategy=multi_worker_mirrored. Run continuous evaluation as one job beside training: separate "
            "workers would each pick up checkpoints at different times."
        )
    staging = os.path.join(evaluator.model_dir, BEST_SUBDIR, _CANDIDATE_SUBDIR)
    report = None
    logging.info(
        "Waiting for checkpoints in %s (up to %d s each) until step %d.", checkpoint_dir, timeout_secs, final_step
    )
    for path in tf.train.checkpoints_iterator(checkpoint_dir, timeout=timeout_secs):
        number = checkpoints.checkpoint_step(path)
        saved = evaluator.saved_report(number) if number is not None else None
        if saved is not None:
            logging.info(
                "%s was already evaluated (%s); not evaluating it again.",
                path,
                report_path(evaluator.model_dir, number),
            )
            report, step = saved, number
        else:
            try:
                staged = checkpoints.copy_checkpoint(path, staging)
            except tf.errors.NotFoundError:
                logging.warning(
                    "%s was deleted by the training job before it could be read (train.max_checkpoints_to_keep); "
                    "going on with the next checkpoint.",
                    path,
                )
                continue
            try:
                step = restore(staged)
                report = evaluator.evaluate(step, checkpoint_path=path, export_best_from=staged)
            finally:
                tf.io.gfile.rmtree(staging)
        if step >= final_step:
            logging.info(
                "Evaluated the final checkpoint (step %d of %d); continuous evaluation is done.", step, final_step
            )
            return report
    logging.warning(
        "No new checkpoint in %s for %d s (evaluation.continuous_timeout_secs) before the final step %d; stopping.",
        checkpoint_dir,
        timeout_secs,
        final_step,
    )
    return report
