"""The Evaluator: the dataset-wide confusion matrix under any strategy, and the report made of it.

Outputs of an evaluation at step N (the chief writes them): a per-class table on the console,
`model_dir/eval/metrics_step_<N>.json` with every metric, TensorBoard scalars in `model_dir/eval/`, and — when
the chosen metric (`evaluation.best_metric`) improves — a copy of the checkpoint in `model_dir/best/` with an
`info.json` (step, metric, value).
"""

import contextlib
import json
import os
import time
from collections.abc import Callable

import numpy as np
import tensorflow as tf
import tf_keras as keras
from absl import logging

from trainer.cluster.tasks import TaskInfo
from trainer.common.files import write_atomically
from trainer.core import eval_loop, metrics
from trainer.core.best_checkpoint import BestCheckpoint
from trainer.core.config import EvalConfig
from trainer.core.early_stopping import EarlyStopping
from trainer.core.eval_report import format_report, is_number, json_ready, report_path, saved_report
from trainer.core.inference import InferenceConfig
from trainer.data.info import DatasetInfo
from trainer.data.pipeline import InputPipeline
from trainer.observe import summaries
from trainer.observe.eval_images import EvalImages
from trainer.storage.checkpoints import BEST_SUBDIR


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
        self.early_stopping = None
        if eval_config.early_stopping_patience:
            self.early_stopping = EarlyStopping(
                eval_config.best_metric, eval_config.early_stopping_patience, eval_config.early_stopping_min_delta
            )
            self.early_stopping.replay(model_dir)
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
            **{key: dict(zip(names, json_ready(results[key]), strict=True)) for key in metrics.PER_CLASS_METRICS},
            "absent_classes": [names[c] for c in results["absent_classes"]],
            "num_pixels": results["num_pixels"],
            "num_examples": self.info.num_eval_examples,
            "inference": self.inference_config.describe(),
            "seconds": round(time.perf_counter() - started, 3),
            "confusion_matrix": results["confusion_matrix"],
        }
        # Only evaluations during training (which may update best/) decide when training stops.
        if self.early_stopping is not None and export_best_from is not None:
            report["early_stopping"] = self.early_stopping.observe(report)
        if not self.task.is_chief:
            logging.info("Evaluation at step %d: mIoU %.4f (the chief reports the details).", step, report["miou"])
            return report
        logging.info("%s", format_report(report))
        scalars = {name: report[name] for name in metrics.SCALAR_METRICS if is_number(report[name])}
        for key, prefix in metrics.PER_CLASS_METRICS.items():
            scalars.update({f"{prefix}/{name}": value for name, value in report[key].items() if value is not None})
        summaries.write_scalars(self.writer, scalars, step)
        path = report_path(self.model_dir, step)
        tf.io.gfile.makedirs(os.path.dirname(path))
        write_atomically(path, json.dumps(json_ready(report), indent=2) + "\n")
        if export_best_from is not None:
            self.best.update(report, export_best_from)
        return report

    def saved_report(self, step: int) -> dict | None:
        """The report already written for `step`, or None."""
        return saved_report(self.model_dir, step)
