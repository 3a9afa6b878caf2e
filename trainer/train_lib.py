"""`run()`: strategy → config tree → model in scope → Trainer, Evaluator and Controller → the mode's work.

Everything a run does is reachable from this function, so a test or a notebook can call it directly; each mode
builds only what it needs.
"""

import dataclasses
import functools
from collections.abc import Callable

import gin
import tensorflow as tf
import tf_keras as keras
from absl import logging

from trainer.cluster.communication import MirroredConfig, MultiWorkerConfig
from trainer.cluster.placement import Placement
from trainer.cluster.preemption import PreemptionWatcher, new_stop_flag
from trainer.cluster.strategies import StrategyName, create_strategy, default_precision, default_steps_per_loop
from trainer.cluster.tasks import TaskInfo, task_info
from trainer.common.errors import UserInputError
from trainer.core import class_weights, evaluation, loop_actions
from trainer.core.config import EvalConfig, Mode, TrainConfig
from trainer.core.continuous_eval import continuous_evaluate
from trainer.core.controller import Controller, NanPolicy
from trainer.core.initialization import initialize_model
from trainer.core.model_state import ModelState, build_model_state
from trainer.core.train_step import StepOptions
from trainer.core.trainer import Trainer
from trainer.data.info import DatasetInfo
from trainer.data.pipeline import InputPipeline
from trainer.data.synthetic import synthetic_shapes
from trainer.data.tfrecord import tfrecord_dataset  # noqa: F401  (registers the gin configurable)
from trainer.models import DeepLabV3Plus
from trainer.observe import manifest, summaries
from trainer.observe.eval_images import EvalImages
from trainer.observe.monitor import TrainMonitor
from trainer.observe.profiler import ProfileWindow, parse_profile_steps
from trainer.observe.progress import Progress
from trainer.run_config import RunConfig
from trainer.serving import exporter
from trainer.storage import checkpoints
from trainer.storage.checkpoints import Checkpointer

OPERATIVE_CONFIG_FILE = loop_actions.OPERATIVE_CONFIG_FILE
# Modes that train; the others only read checkpoints, so they may run beside a training job on its model_dir.
TRAINING_MODES = (Mode.TRAIN, Mode.TRAIN_AND_EVAL)
EVALUATING_MODES = (Mode.EVAL, Mode.TRAIN_AND_EVAL, Mode.CONTINUOUS_EVAL)


@dataclasses.dataclass
class RunContext:
    """What every mode of one run shares: where it runs, its data and settings, the model and its checkpoints."""

    mode: Mode
    model_dir: str
    strategy: tf.distribute.Strategy
    task: TaskInfo
    info: DatasetInfo
    config: RunConfig
    state: ModelState
    writers: summaries.SummaryWriters
    checkpointer: Checkpointer

    @property
    def step(self) -> int:
        return int(self.state.global_step.numpy())

    def close(self) -> None:
        self.writers.close()


def build_context(
    mode: Mode,
    model_dir: str,
    strategy: tf.distribute.Strategy,
    info: DatasetInfo,
    model_fn: Callable[..., keras.Model],
    config: RunConfig,
    summary_dir: str | None = None,
) -> RunContext:
    """Builds the model (and, for training modes, its optimizer), the summary writers and the checkpointer.

    Summaries go to `summary_dir` (train/, eval/ in it) when given, else to `model_dir`.
    """
    train = config.train
    task = task_info(strategy)
    state = build_model_state(
        strategy,
        functools.partial(model_fn, num_classes=info.num_classes),
        config.input_pipeline.crop_size,
        train,
        config.optimizer if mode in TRAINING_MODES else None,
        config.batch_norm,
        channels=info.image_channels,
    )
    streams = [summaries.TRAIN_SUBDIR] if mode in TRAINING_MODES else []
    streams += [summaries.EVAL_SUBDIR] if mode in EVALUATING_MODES else []
    writers = summaries.SummaryWriters(summary_dir or model_dir, task, streams)
    checkpointer = Checkpointer(
        state.checkpoint,
        model_dir,
        task,
        state.global_step,
        max_to_keep=train.max_checkpoints_to_keep,
        every_steps=train.checkpoint_every_steps,
    )
    return RunContext(mode, model_dir, strategy, task, info, config, state, writers, checkpointer)


def build_trainer(
    context: RunContext, monitor: TrainMonitor | None = None, stop_flag: tf.Variable | None = None
) -> Trainer:
    """The Trainer of `context`'s model, fed from the training split (timed by `monitor` when given).

    With `stop_flag` (`preemption.new_stop_flag`) its host loop stops after the step at which the flag is set.
    """
    train, pipeline, state = context.config.train, context.config.input_pipeline, context.state

    def train_dataset(input_context: tf.distribute.InputContext) -> tf.data.Dataset:
        # Starting at the restored step, a resumed run sees the batches an uninterrupted run would have seen.
        return pipeline.train_dataset(context.info, train.global_batch_size, input_context, start_step=context.step)

    def batches():
        iterator = iter(context.strategy.distribute_datasets_from_function(train_dataset))
        return monitor.timed(iterator) if monitor is not None else iterator

    options = StepOptions.from_config(train, ignore_label=context.info.ignore_label)
    return Trainer(
        context.strategy,
        state.model,
        state.optimizer,
        class_weights.resolve(context.config.loss, context.info),
        state.global_step,
        options,
        ema=state.ema,
        summary_every=train.summary_every,
        summary_writer=context.writers.train,
        batches=batches,
        train_files=context.info.train_files,
        stop_flag=stop_flag,
    )


def build_controller(context: RunContext, profile_steps: tuple[int, int] | None = None) -> Controller:
    """The Trainer and the Controller around it, with the actions every training run takes."""
    config, state, writers = context.config, context.state, context.writers
    monitor = TrainMonitor(
        context.strategy,
        state.model,
        config.train.global_batch_size,
        config.input_pipeline.crop_size,
        config.observe,
    )
    actions = [
        loop_actions.ProfileAction(ProfileWindow(profile_steps, writers.train_dir, context.task.is_chief)),
        loop_actions.ThroughputAction(monitor),
        loop_actions.SummaryAction(writers.train),
        loop_actions.ProgressAction(Progress(config.train.steps, context.task.is_chief)),
        loop_actions.OperativeConfigAction(context.model_dir, context.task, writers.train),
    ]

    def save_for_preemption() -> str | None:
        return context.checkpointer.save(force=True) or context.checkpointer.latest_checkpoint

    stop_flag = new_stop_flag()
    return Controller(
        build_trainer(context, monitor, stop_flag),
        context.checkpointer,
        config.train.steps_per_loop,
        nan_policy=NanPolicy(
            context.checkpointer, config.train.nan_recovery_attempts, config.train.checkpoint_every_steps
        ),
        actions=actions,
        preemption=lambda: PreemptionWatcher(
            context.strategy, save_for_preemption, lambda: context.step, stop_flag, config.preemption
        ),
    )


def build_evaluator(context: RunContext) -> evaluation.Evaluator:
    """The Evaluator of `context`'s model on the eval split (with the EMA averages swapped in, when kept)."""
    config = context.config
    return evaluation.Evaluator(
        context.strategy,
        context.state.model,
        context.info,
        config.input_pipeline,
        config.evaluation,
        context.model_dir,
        context.task,
        context.writers.eval,
        config.inference,
        weights_context=context.state.averaged_weights,
        eval_images=EvalImages(config.input_pipeline, context.info, config.observe),
    )


def _export(context: RunContext, step: int) -> None:
    """Exports the model's current weights, those of training step `step` (every worker calls this)."""
    config = context.config
    exporter.export_model(
        context.state.model,
        context.model_dir,
        step,
        context.info,
        config.input_pipeline,
        config.export,
        context.task,
        weights_context=context.state.averaged_weights,
    )


def _train(context: RunContext, profile_steps: tuple[int, int] | None) -> dict | None:
    """`--mode=train` / `train_and_eval`: resume or initialise, train (and evaluate), export if asked."""
    controller = build_controller(context, profile_steps)
    try:
        if context.checkpointer.restore_latest() is None:
            # Only a fresh run starts from pretrained weights; a resumed one continues from its own checkpoint.
            with context.strategy.scope():
                initialize_model(context.state.model, context.config.init)
        steps = context.config.train.steps
        report = None
        if context.mode is Mode.TRAIN:
            controller.train(steps)
        else:
            evaluator = build_evaluator(context)

            def evaluate() -> dict:
                latest = context.checkpointer.latest_checkpoint
                return evaluator.evaluate(context.step, latest, export_best_from=latest)

            if evaluator.early_stopping is not None and evaluator.early_stopping.stopped:
                logging.info("Early stopping: this run had already stopped at step %d; not training on.", context.step)
                steps = context.step
            report = controller.train_and_evaluate(steps, context.config.evaluation.every_steps, evaluate)
        if context.config.export.at_end_of_training:
            _export(context, context.step)
        return report
    finally:
        controller.close()


def _evaluate(context: RunContext, checkpoint: str | None) -> dict | None:
    """`--mode=eval` (one checkpoint) or `continuous_eval` (each new one, beside training)."""
    evaluator = build_evaluator(context)
    directory = context.checkpointer.directory
    if context.mode is Mode.EVAL:
        if checkpoint:
            path = checkpoints.resolve_checkpoint(checkpoint, "--checkpoint")
        else:
            path = checkpoints.latest_checkpoint(
                directory, "--mode=eval", "Train first, or pass --checkpoint=<prefix or directory>."
            )
        step = context.checkpointer.restore(path)
        logging.info("Restored %s (step %d).", path, step)
        return evaluator.evaluate(step, path, None)
    return continuous_evaluate(
        evaluator,
        context.checkpointer.restore,
        directory,
        final_step=context.config.train.steps,
        timeout_secs=context.config.evaluation.continuous_timeout_secs,
    )


def _check_flags(mode: Mode, model_dir: str, checkpoint: str | None) -> None:
    if checkpoint and mode is not Mode.EVAL:
        raise UserInputError(
            f"--checkpoint={checkpoint}: expected only with --mode=eval, received --mode={mode.value}."
        )
    if not model_dir:
        raise UserInputError("--model_dir is required: the directory for checkpoints, summaries and results.")


def configure(strategy: tf.distribute.Strategy, **given: object) -> RunConfig:
    """The run's config tree from gin (and `given` parts), with the strategy's defaults, checked against it."""
    config = RunConfig.from_gin(**given)
    train = config.train.with_defaults(default_steps_per_loop(strategy), default_precision(strategy))
    train.check_replicas(strategy.num_replicas_in_sync)
    config.evaluation.check_replicas(strategy.num_replicas_in_sync)
    return dataclasses.replace(config, train=train)


@gin.configurable(denylist=["mode", "model_dir", "strategy", "tpu", "checkpoint", "profile_steps", "summary_dir"])
def run(
    mode: "str | Mode",
    model_dir: str,
    strategy: "str | StrategyName | tf.distribute.Strategy" = "auto",
    tpu: str | None = None,
    checkpoint: str | None = None,
    dataset: Callable[[], DatasetInfo] = synthetic_shapes,
    model: Callable[..., keras.Model] = DeepLabV3Plus,
    train_config: TrainConfig | None = None,
    eval_config: EvalConfig | None = None,
    input_pipeline: InputPipeline | None = None,
    profile_steps: "str | tuple[int, int] | None" = None,
    export_config: exporter.ExportConfig | None = None,
    summary_dir: str | None = None,
) -> dict | None:
    """Trains, evaluates or exports DeepLabV3+ in `model_dir`; returns the last evaluation report, if any.

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
      summary_dir: where the train/ and eval/ summaries go instead of `model_dir` (Vertex AI's
        AIP_TENSORBOARD_LOG_DIR).
    """
    mode = Mode.parse(mode)
    _check_flags(mode, model_dir, checkpoint)
    profile_window = parse_profile_steps(profile_steps)
    if not isinstance(strategy, tf.distribute.Strategy):
        strategy = create_strategy(
            strategy, Placement(tpu=tpu), mirrored=MirroredConfig(), multi_worker=MultiWorkerConfig()
        )
    config = configure(
        strategy, train=train_config, evaluation=eval_config, input_pipeline=input_pipeline, export=export_config
    )
    keras.utils.set_random_seed(config.train.seed)
    if config.train.deterministic:
        tf.config.experimental.enable_op_determinism()
    logging.info("Configuration:\n%s", gin.config_str())
    context = build_context(mode, model_dir, strategy, dataset(), model, config, summary_dir)
    try:
        if mode is not Mode.CONTINUOUS_EVAL:  # an evaluator beside a training job writes only eval/ and best/
            manifest.write_run_manifest(mode, model_dir, strategy, context.task, context.writers.train, context.step)
        if mode is Mode.EXPORT:
            # Restores only the weights, of the checkpoint `export.checkpoint` designates.
            _export(context, exporter.restore_checkpoint_to_export(context.state.model, model_dir, config.export))
            return None
        if mode in TRAINING_MODES:
            return _train(context, profile_window)
        return _evaluate(context, checkpoint)
    finally:
        context.close()
