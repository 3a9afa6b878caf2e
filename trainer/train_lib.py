"""`run()`: strategy → model and optimizer in scope → restore → train and/or evaluate.

Everything a run does is reachable from this function, so a test or a notebook can call it directly.
"""

import json
import os
import time
from collections.abc import Callable

import gin
import numpy as np
import tensorflow as tf
import tf_keras as keras
from absl import logging

from trainer import distribute, loop, metrics, optim, summaries
from trainer.checkpoints import Checkpointer
from trainer.config import ConfigError, EvalConfig, Mode, TrainConfig
from trainer.data.info import DatasetInfo
from trainer.data.pipeline import InputPipeline
from trainer.data.synthetic import synthetic_shapes
from trainer.data.tfrecord import tfrecord_dataset  # noqa: F401  (registers the gin configurable)
from trainer.initialization import initialize_model
from trainer.models import DeepLabV3Plus

OPERATIVE_CONFIG_FILE = "operative_config.gin"


def _write_atomically(path: str, text: str) -> None:
    """Writes `text` to `path` through a temporary file and a rename, so readers never see half a file."""
    temporary = f"{path}.tmp-{os.getpid()}"
    with tf.io.gfile.GFile(temporary, "w") as f:
        f.write(text)
    tf.io.gfile.rename(temporary, path, overwrite=True)


class _Run:
    """The state of one run: the strategy and everything built inside its scope."""

    def __init__(
        self,
        model_dir: str,
        strategy: tf.distribute.Strategy,
        dataset_info: DatasetInfo,
        model_fn: Callable[..., keras.Model],
        train_config: TrainConfig,
        eval_config: EvalConfig,
        input_pipeline: InputPipeline,
    ):
        self.model_dir = model_dir
        self.strategy = strategy
        self.info = dataset_info
        self.train_config = train_config
        self.eval_config = eval_config
        self.input_pipeline = input_pipeline
        self.task = distribute.task_info(strategy)
        self.writers = summaries.SummaryWriters(model_dir, self.task)
        for name, batch in (
            ("train.global_batch_size", train_config.global_batch_size),
            ("evaluation.global_batch_size", eval_config.global_batch_size),
        ):
            if batch % strategy.num_replicas_in_sync:
                raise ConfigError(
                    f"gin binding {name}: expected a multiple of the number of replicas "
                    f"({strategy.num_replicas_in_sync}), received {batch}."
                )
        with strategy.scope():
            self.model = model_fn(num_classes=dataset_info.num_classes)
            height, width = input_pipeline.crop_size
            self.model(tf.zeros([1, height, width, 3]), training=False)
            self.optimizer = optim.build_optimizer(total_steps=train_config.steps)
            self.global_step = tf.Variable(
                0,
                dtype=tf.int64,
                trainable=False,
                name="global_step",
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
            )
        checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer, global_step=self.global_step)
        self.checkpointer = Checkpointer(
            checkpoint,
            model_dir,
            self.task,
            self.global_step,
            max_to_keep=train_config.max_checkpoints_to_keep,
            every_steps=train_config.checkpoint_every_steps,
        )
        self._train_loop = loop.make_train_loop(
            strategy,
            self.model,
            self.optimizer,
            self.global_step,
            ignore_label=dataset_info.ignore_label,
            l2_weight_decay=train_config.l2_weight_decay,
            jit_compile=train_config.jit_compile,
        )
        self._eval_loop = loop.make_eval_loop(strategy, self.model, dataset_info.num_classes, dataset_info.ignore_label)
        self._train_iterator = None
        self._wrote_operative_config = False

    @property
    def step(self) -> int:
        return int(self.global_step.numpy())

    def _train_dataset(self, input_context: tf.distribute.InputContext) -> tf.data.Dataset:
        return self.input_pipeline.train_dataset(self.info, self.train_config.global_batch_size, input_context)

    def _eval_dataset(self, input_context: tf.distribute.InputContext) -> tf.data.Dataset:
        return self.input_pipeline.eval_dataset(self.info, self.eval_config.global_batch_size, input_context)

    def train_until(self, target_step: int) -> None:
        """Trains in host loops of `train.steps_per_loop` steps until the global step reaches `target_step`."""
        if self._train_iterator is None:
            dataset = self.strategy.distribute_datasets_from_function(self._train_dataset)
            self._train_iterator = iter(dataset)
        total_steps = self.train_config.steps
        while self.step < target_step:
            start_step = self.step
            num_steps = min(self.train_config.steps_per_loop, target_step - start_step)
            started = time.perf_counter()
            outputs = self._train_loop(self._train_iterator, tf.constant(num_steps, tf.int32))
            outputs = {name: value.numpy() for name, value in outputs.items()}
            elapsed = time.perf_counter() - started
            end_step = self.step
            if not outputs["all_finite"]:
                raise FloatingPointError(
                    f"The training loss became NaN or Inf between steps {start_step} and {end_step} "
                    f"(mean loss over that window: {outputs['loss']}). Lower optimizer.learning_rate or check the "
                    "input data; the last good checkpoint is in "
                    f"{self.checkpointer.directory}."
                )
            steps_per_sec = num_steps / elapsed
            scalars = {
                "loss": float(outputs["loss"]),
                "cross_entropy": float(outputs["cross_entropy"]),
                "learning_rate": float(outputs["learning_rate"]),
                "steps_per_sec": steps_per_sec,
                "examples_per_sec": steps_per_sec * self.train_config.global_batch_size,
            }
            summaries.write_scalars(self.writers.train, scalars, end_step)
            logging.info(
                "step %d/%d  loss %.4f  lr %.5f  %.1f examples/s",
                end_step,
                total_steps,
                scalars["loss"],
                scalars["learning_rate"],
                scalars["examples_per_sec"],
            )
            if not self._wrote_operative_config:
                self._write_operative_config(end_step)
            self.checkpointer.save(force=end_step >= target_step)

    def _write_operative_config(self, step: int) -> None:
        """Writes the config gin actually used (known only after the first loop built everything)."""
        self._wrote_operative_config = True
        if not self.task.is_chief:
            return
        config_text = gin.operative_config_str()
        _write_atomically(os.path.join(self.model_dir, OPERATIVE_CONFIG_FILE), config_text)
        # Indenting by four spaces makes TensorBoard's Markdown renderer show it as code.
        markdown = "\n".join("    " + line for line in config_text.splitlines())
        summaries.write_text(self.writers.train, "operative_config", markdown, step)

    def evaluate(self) -> dict:
        """Evaluates the current weights on the whole eval split; logs, writes TensorBoard and JSON (chief)."""
        dataset = self.strategy.distribute_datasets_from_function(self._eval_dataset)
        num_steps = self.input_pipeline.eval_steps(self.info, self.eval_config.global_batch_size)
        started = time.perf_counter()
        matrix = self._eval_loop(iter(dataset), tf.constant(num_steps, tf.int32)).numpy()
        results = metrics.segmentation_metrics(matrix)
        step = self.step
        per_class = dict(zip(self.info.class_names, results["per_class_iou"], strict=True))
        logging.info(
            "eval at step %d: mIoU %.4f  pixel accuracy %.4f  (%d pixels, %.1f s)\n%s",
            step,
            results["miou"],
            results["pixel_accuracy"],
            results["num_pixels"],
            time.perf_counter() - started,
            "\n".join(f"  {name:>20s}  IoU {iou:.4f}" for name, iou in per_class.items()),
        )
        scalars = {"miou": results["miou"], "pixel_accuracy": results["pixel_accuracy"]}
        scalars.update({f"iou/{name}": iou for name, iou in per_class.items() if not np.isnan(iou)})
        summaries.write_scalars(self.writers.eval, scalars, step)
        report = {
            "step": step,
            "miou": results["miou"],
            "pixel_accuracy": results["pixel_accuracy"],
            # JSON has no NaN: a class absent from labels and predictions is null and left out of the mean.
            "per_class_iou": {name: (None if np.isnan(iou) else iou) for name, iou in per_class.items()},
            "num_pixels": results["num_pixels"],
            "num_examples": self.info.num_eval_examples,
            "checkpoint": self.checkpointer.latest_checkpoint,
        }
        if self.task.is_chief:
            eval_dir = os.path.join(self.model_dir, summaries.EVAL_SUBDIR)
            tf.io.gfile.makedirs(eval_dir)
            _write_atomically(os.path.join(eval_dir, f"metrics_step_{step:08d}.json"), json.dumps(report, indent=2))
        return report


@gin.configurable(denylist=["mode", "model_dir", "strategy", "tpu"])
def run(
    mode: "str | Mode",
    model_dir: str,
    strategy: "str | distribute.StrategyName | tf.distribute.Strategy" = "auto",
    tpu: str | None = None,
    dataset: Callable[[], DatasetInfo] = synthetic_shapes,
    model: Callable[..., keras.Model] = DeepLabV3Plus,
    train_config: TrainConfig | None = None,
    eval_config: EvalConfig | None = None,
    input_pipeline: InputPipeline | None = None,
) -> dict | None:
    """Trains and/or evaluates DeepLabV3+ in `model_dir`; returns the last evaluation report, if any.

    Args:
      mode: train, eval (the latest checkpoint) or train_and_eval (every `evaluation.every_steps` and at the end).
      model_dir: where checkpoints, summaries, the operative config and eval JSON go; a run resumes from it.
      strategy: a `StrategyName` value or an already built strategy (tests pass one).
      tpu: TPU name, grpc:// address or 'local', for the tpu strategy.
      dataset: returns the `DatasetInfo` to train on (e.g. `@synthetic_shapes`, `@tfrecord_dataset`).
      model: builds the model given `num_classes`.
    """
    mode = Mode.parse(mode)
    if not model_dir:
        raise ConfigError("--model_dir is required: the directory for checkpoints, summaries and results.")
    if not isinstance(strategy, tf.distribute.Strategy):
        strategy = distribute.create_strategy(strategy, distribute.Placement(tpu=tpu))
    train_config = train_config or TrainConfig()
    eval_config = eval_config or EvalConfig()
    input_pipeline = input_pipeline or InputPipeline()
    keras.utils.set_random_seed(train_config.seed)
    logging.info("Configuration:\n%s", gin.config_str())
    state = _Run(model_dir, strategy, dataset(), model, train_config, eval_config, input_pipeline)
    try:
        restored_step = state.checkpointer.restore_latest()
        if restored_step is None and mode is not Mode.EVAL:
            # Only a fresh run starts from pretrained weights; a resumed one continues from its own checkpoint.
            with state.strategy.scope():
                initialize_model(state.model)
        if mode is Mode.EVAL:
            if restored_step is None:
                raise ConfigError(f"--mode=eval: no checkpoint in {state.checkpointer.directory} to evaluate.")
            return state.evaluate()
        if mode is Mode.TRAIN:
            state.train_until(train_config.steps)
            return None
        report = None
        while state.step < train_config.steps:
            next_eval = (state.step // eval_config.every_steps + 1) * eval_config.every_steps
            state.train_until(min(next_eval, train_config.steps))
            report = state.evaluate()
        return report or state.evaluate()
    finally:
        state.writers.close()
