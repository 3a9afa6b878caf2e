"""`run()`: strategy → model and optimizer in scope → restore → train and/or evaluate.

Everything a run does is reachable from this function, so a test or a notebook can call it directly.
"""

import dataclasses
import os
import time
from collections.abc import Callable

import gin
import numpy as np
import tensorflow as tf
import tf_keras as keras
from absl import logging

from trainer.cluster import distribute
from trainer.cluster.preemption import PreemptionWatcher
from trainer.common.errors import UserInputError
from trainer.core import ema as ema_lib
from trainer.core import evaluation, loop, losses, optim, precision
from trainer.core.config import EvalConfig, Mode, TrainConfig
from trainer.core.initialization import initialize_model
from trainer.data import integrity
from trainer.data.info import DatasetInfo
from trainer.data.pipeline import InputPipeline
from trainer.data.synthetic import synthetic_shapes
from trainer.data.tfrecord import tfrecord_dataset  # noqa: F401  (registers the gin configurable)
from trainer.models import DeepLabV3Plus
from trainer.observe import manifest, progress, summaries
from trainer.serving import exporter
from trainer.storage import checkpoints
from trainer.storage.checkpoints import Checkpointer

OPERATIVE_CONFIG_FILE = "operative_config.gin"
# Modes that train; the others only read checkpoints, so they may run beside a training job on its model_dir.
_TRAINING_MODES = (Mode.TRAIN, Mode.TRAIN_AND_EVAL)
_EVALUATING_MODES = (Mode.EVAL, Mode.TRAIN_AND_EVAL, Mode.CONTINUOUS_EVAL)


def _write_atomically(path: str, text: str) -> None:
    """Writes `text` to `path` through a temporary file and a rename, so readers never see half a file."""
    temporary = f"{path}.tmp-{os.getpid()}"
    with tf.io.gfile.GFile(temporary, "w") as f:
        f.write(text)
    tf.io.gfile.rename(temporary, path, overwrite=True)


def with_strategy_defaults(train_config: TrainConfig, strategy: tf.distribute.Strategy) -> TrainConfig:
    """Fills `train.steps_per_loop` and `train.precision` left unset with the strategy's defaults."""
    return dataclasses.replace(
        train_config,
        steps_per_loop=train_config.steps_per_loop or distribute.default_steps_per_loop(strategy),
        precision=train_config.precision or distribute.default_precision(strategy),
    )


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
        mode: Mode = Mode.TRAIN_AND_EVAL,
        profile_steps: tuple[int, int] | None = None,
    ):
        train_config = with_strategy_defaults(train_config, strategy)
        self.model_dir = model_dir
        self.strategy = strategy
        self.info = dataset_info
        self.train_config = train_config
        self.eval_config = eval_config
        self.input_pipeline = input_pipeline
        self.task = distribute.task_info(strategy)
        streams = [summaries.TRAIN_SUBDIR] if mode in _TRAINING_MODES else []
        streams += [summaries.EVAL_SUBDIR] if mode in _EVALUATING_MODES else []
        self.writers = summaries.SummaryWriters(model_dir, self.task, streams)
        for name, batch in (
            ("train.global_batch_size", train_config.global_batch_size),
            ("evaluation.global_batch_size", eval_config.global_batch_size),
        ):
            if batch % strategy.num_replicas_in_sync:
                raise UserInputError(
                    f"gin binding {name}: expected a multiple of the number of replicas "
                    f"({strategy.num_replicas_in_sync}), received {batch}."
                )
        accumulation = train_config.gradient_accumulation_steps
        if train_config.global_batch_size % (strategy.num_replicas_in_sync * accumulation):
            raise UserInputError(
                f"gin binding train.gradient_accumulation_steps: expected a divisor of the per-replica batch "
                f"({train_config.global_batch_size} / {strategy.num_replicas_in_sync} replicas), received "
                f"{accumulation}."
            )
        # The dtype policy must be in force while the layers are constructed (they keep it).
        with strategy.scope(), precision.policy_scope(train_config.precision):
            self.model = model_fn(num_classes=dataset_info.num_classes)
            height, width = input_pipeline.crop_size
            self.model(tf.zeros([1, height, width, 3]), training=False)
            self.optimizer = precision.wrap_optimizer(
                optim.build_optimizer(total_steps=train_config.steps, model=self.model), train_config.precision
            )
            self.global_step = tf.Variable(
                0,
                dtype=tf.int64,
                trainable=False,
                name="global_step",
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
            )
            self.ema = None
            if train_config.ema_decay is not None:
                self.ema = ema_lib.ExponentialMovingAverage(self.model.variables, train_config.ema_decay)
        self.checkpoint = tf.train.Checkpoint(
            model=self.model,
            optimizer=self.optimizer,
            global_step=self.global_step,
            **({"ema": self.ema} if self.ema is not None else {}),
        )
        self.checkpointer = Checkpointer(
            self.checkpoint,
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
            loss=losses.SegmentationLoss(),
            gradient_accumulation_steps=train_config.gradient_accumulation_steps,
            ema=self.ema,
            summary_every=train_config.summary_every,
        )
        self.evaluator = evaluation.Evaluator(
            strategy,
            self.model,
            dataset_info,
            input_pipeline,
            eval_config,
            model_dir,
            self.task,
            self.writers.eval,
            weights_context=self.averaged_weights,
        )
        self._train_iterator = None
        self._wrote_operative_config = False
        self.preemption: PreemptionWatcher | None = None
        self.monitor = summaries.TrainMonitor(
            strategy, self.model, self.optimizer, train_config.global_batch_size, input_pipeline.crop_size
        )
        self.progress = progress.Progress(train_config.steps, self.task.is_chief)
        self.profiler = summaries.ProfileWindow(profile_steps, self.writers.train_dir, self.task.is_chief)
        self.eval_images = summaries.EvalImages(input_pipeline, dataset_info)
        self._nan_recoveries = 0

    @property
    def step(self) -> int:
        return int(self.global_step.numpy())

    def _train_dataset(self, input_context: tf.distribute.InputContext) -> tf.data.Dataset:
        # Starting at the restored step, a resumed run sees the batches an uninterrupted run would have seen.
        return self.input_pipeline.train_dataset(
            self.info, self.train_config.global_batch_size, input_context, start_step=self.step
        )

    def train_until(self, target_step: int) -> None:
        """Trains in host loops of `train.steps_per_loop` steps until the global step reaches `target_step`."""
        if self._train_iterator is None:
            dataset = self.strategy.distribute_datasets_from_function(self._train_dataset)
            self._train_iterator = self.monitor.timed(iter(dataset))
        if self.preemption is None:
            self.preemption = PreemptionWatcher(self.strategy, self._save_for_preemption, lambda: self.step)
        while self.step < target_step:
            start_step = self.step
            num_steps = min(self.train_config.steps_per_loop, target_step - start_step)
            self.profiler.before_loop(start_step, num_steps)
            started = time.perf_counter()
            try:
                # The default writer receives the per-step summaries the loop records (train.summary_every).
                with self.writers.train.as_default():
                    outputs = self._train_loop(self._train_iterator, tf.constant(num_steps, tf.int32))
            except tf.errors.OpError as error:
                explanation = integrity.explain_input_error(error, self.info.train_files, "train")
                if explanation is None:
                    raise
                raise explanation from error
            outputs = {name: value.numpy() for name, value in outputs.items()}
            elapsed = time.perf_counter() - started
            end_step = self.step
            self.profiler.after_loop(end_step)
            if not outputs["all_finite"]:
                self._recover_from_nonfinite_step(start_step, outputs)
                continue
            # Every float scalar of the loop (loss terms, gradient and weight norms, loss scale, ...) is a tag.
            scalars = {
                name: float(value)
                for name, value in outputs.items()
                if np.ndim(value) == 0 and np.issubdtype(np.asarray(value).dtype, np.floating)
            }
            scalars.update(self.monitor.loop_scalars(num_steps, elapsed))
            summaries.write_scalars(self.writers.train, scalars, end_step)
            self.progress.update(end_step, num_steps, target_step, scalars)
            if not self._wrote_operative_config:
                self._write_operative_config(end_step)
            self.checkpointer.save(force=end_step >= target_step)
            self.preemption.check()

    def _save_for_preemption(self) -> str | None:
        return self.checkpointer.save(force=True) or self.checkpointer.latest_checkpoint

    def _recover_from_nonfinite_step(self, start_step: int, outputs: dict) -> None:
        """Raises FloatingPointError naming the step, or restores the last checkpoint (`train.nan_recovery_attempts`).

        After a restore training continues with the batches that follow the bad one: the steps since the
        checkpoint are redone on new data, so the batch that produced the NaN is not seen again.
        """
        bad_step = int(outputs["nonfinite_step"])
        message = (
            f"The training loss or gradient norm became NaN or Inf at step {bad_step} (host loop over steps "
            f"{start_step + 1}-{bad_step}; mean loss over those steps {outputs['loss']}, mean gradient norm "
            f"{outputs['gradient_norm']})."
        )
        attempts = self.train_config.nan_recovery_attempts
        if self._nan_recoveries >= attempts:
            tried = f" after {attempts} recoveries (train.nan_recovery_attempts)" if attempts else ""
            raise FloatingPointError(
                f"{message} Stopping{tried}. Lower optimizer.learning_rate, set optimizer.global_clipnorm, or check "
                f"the input data; the last good checkpoint is in {self.checkpointer.directory}."
            )
        restored_step = self.checkpointer.restore_latest()
        if restored_step is None:
            raise FloatingPointError(
                f"{message} train.nan_recovery_attempts = {attempts}, but no checkpoint has been written yet to go "
                f"back to (train.checkpoint_every_steps = {self.train_config.checkpoint_every_steps})."
            )
        self._nan_recoveries += 1
        logging.warning(
            "%s Restored the checkpoint of step %d; training continues with the batches after the bad one "
            "(recovery %d of %d).",
            message,
            restored_step,
            self._nan_recoveries,
            attempts,
        )

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

    def averaged_weights(self):
        """Context in which the model holds the weights to evaluate and export: the EMA averages when kept."""
        return ema_lib.average_weights(self.ema)

    def restore(self, path: str) -> int:
        """Restores the checkpoint prefix `path` (to evaluate it); returns its step."""
        step = self.checkpointer.restore(path)
        logging.info("Restored %s (step %d).", path, step)
        return step

    def evaluate(self, checkpoint_path: str | None = None, export_best: bool = True) -> dict:
        """Evaluates the current weights (from `checkpoint_path`, default the latest saved) on the eval split."""
        checkpoint_path = checkpoint_path or self.checkpointer.latest_checkpoint
        report = self.evaluator.evaluate(self.step, checkpoint_path, checkpoint_path if export_best else None)
        with self.averaged_weights():
            self.eval_images.write(self.writers.eval, self.model, self.step)
        return report


def _export(state: _Run, export_config: exporter.ExportConfig, step: int) -> None:
    """Exports the model's weights, those of training step `step` (every worker calls this)."""
    exporter.export_model(
        state.model,
        state.model_dir,
        step,
        state.info,
        state.input_pipeline,
        export_config,
        state.task,
        weights_context=state.averaged_weights,
    )


def _export_at_end_of_training(state: _Run, export_config: exporter.ExportConfig) -> None:
    """Exports the final weights when `export.at_end_of_training` is set (every worker calls this)."""
    if export_config.at_end_of_training:
        _export(state, export_config, state.step)


@gin.configurable(denylist=["mode", "model_dir", "strategy", "tpu", "checkpoint", "profile_steps"])
def run(
    mode: "str | Mode",
    model_dir: str,
    strategy: "str | distribute.StrategyName | tf.distribute.Strategy" = "auto",
    tpu: str | None = None,
    checkpoint: str | None = None,
    dataset: Callable[[], DatasetInfo] = synthetic_shapes,
    model: Callable[..., keras.Model] = DeepLabV3Plus,
    train_config: TrainConfig | None = None,
    eval_config: EvalConfig | None = None,
    input_pipeline: InputPipeline | None = None,
    profile_steps: "str | tuple[int, int] | None" = None,
    export_config: exporter.ExportConfig | None = None,
) -> dict | None:
    """Trains and/or evaluates DeepLabV3+ in `model_dir`; returns the last evaluation report, if any.

    Args:
      mode: train, eval (one checkpoint: `checkpoint` or the latest), train_and_eval (every
        `evaluation.every_steps` and at the end), continuous_eval (each new checkpoint once, beside training,
        until `train.steps`) or export (the checkpoint `export.checkpoint` designates, to
        model_dir/export/<step>).
      model_dir: where checkpoints, summaries, the operative config and eval JSON go; a run resumes from it.
      strategy: a `StrategyName` value or an already built strategy (tests pass one).
      tpu: TPU name, grpc:// address or 'local', for the tpu strategy.
      checkpoint: with mode eval, the checkpoint prefix or directory to evaluate instead of the latest.
      dataset: returns the `DatasetInfo` to train on (e.g. `@synthetic_shapes`, `@tfrecord_dataset`).
      model: builds the model given `num_classes`.
      profile_steps: `START,END` global steps to capture a profiler trace of (rounded out to host loops).
    """
    mode = Mode.parse(mode)
    if checkpoint and mode is not Mode.EVAL:
        raise UserInputError(
            f"--checkpoint={checkpoint}: expected only with --mode=eval, received --mode={mode.value}."
        )
    profile_window = summaries.parse_profile_steps(profile_steps)
    if not model_dir:
        raise UserInputError("--model_dir is required: the directory for checkpoints, summaries and results.")
    if not isinstance(strategy, tf.distribute.Strategy):
        strategy = distribute.create_strategy(strategy, distribute.Placement(tpu=tpu))
    train_config = train_config or TrainConfig()  # strategy defaults are filled in by _Run
    eval_config = eval_config or EvalConfig()
    input_pipeline = input_pipeline or InputPipeline()
    export_config = export_config or exporter.ExportConfig()
    keras.utils.set_random_seed(train_config.seed)
    if train_config.deterministic:
        tf.config.experimental.enable_op_determinism()
    logging.info("Configuration:\n%s", gin.config_str())
    state = _Run(model_dir, strategy, dataset(), model, train_config, eval_config, input_pipeline, mode, profile_window)
    try:
        if mode is not Mode.CONTINUOUS_EVAL:  # an evaluator beside a training job writes only eval/ and best/
            manifest.write_run_manifest(mode, model_dir, strategy, state.task, state.writers.train, state.step)
        if mode is Mode.EVAL:
            path = (
                checkpoints.resolve_checkpoint(checkpoint, "--checkpoint")
                if checkpoint
                else checkpoints.latest_checkpoint(
                    state.checkpointer.directory,
                    "--mode=eval",
                    "Train first, or pass --checkpoint=<prefix or directory>.",
                )
            )
            state.restore(path)
            return state.evaluate(path, export_best=False)
        if mode is Mode.CONTINUOUS_EVAL:
            return evaluation.continuous_evaluate(
                state.evaluator,
                state.restore,
                state.checkpointer.directory,
                final_step=train_config.steps,
                timeout_secs=eval_config.continuous_timeout_secs,
            )
        if mode is Mode.EXPORT:
            # Restores only the weights, of the checkpoint `export.checkpoint` designates.
            _export(state, export_config, exporter.restore_checkpoint_to_export(state.model, model_dir, export_config))
            return None
        restored_step = state.checkpointer.restore_latest()
        if restored_step is None:
            # Only a fresh run starts from pretrained weights; a resumed one continues from its own checkpoint.
            with state.strategy.scope():
                initialize_model(state.model)
        if mode is Mode.TRAIN:
            state.train_until(train_config.steps)
            _export_at_end_of_training(state, export_config)
            return None
        report = None
        while state.step < train_config.steps:
            next_eval = (state.step // eval_config.every_steps + 1) * eval_config.every_steps
            state.train_until(min(next_eval, train_config.steps))
            report = state.evaluate()
        report = report or state.evaluate()
        _export_at_end_of_training(state, export_config)
        return report
    finally:
        if state.preemption is not None:
            state.preemption.close()
        state.profiler.stop()
        state.progress.close()
        state.writers.close()
