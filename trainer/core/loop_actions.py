"""The actions a Controller runs around each host loop: profiler window, throughput, summaries, progress, config."""

import os

import gin
import tensorflow as tf

from trainer.cluster.tasks import TaskInfo
from trainer.common.files import write_atomically
from trainer.core.controller import LoopResult
from trainer.observe import summaries
from trainer.observe.monitor import TrainMonitor
from trainer.observe.profiler import ProfileWindow
from trainer.observe.progress import Progress

OPERATIVE_CONFIG_FILE = "operative_config.gin"


class LoopActionBase:
    """Does nothing before or after a loop; actions override what they need."""

    def before_loop(self, start_step: int, num_steps: int) -> None:
        del start_step, num_steps

    def after_loop(self, result: LoopResult) -> None:
        del result

    def close(self) -> None:
        """Releases what the action holds (at the end of training, also after an error)."""


class ProfileAction(LoopActionBase):
    """Starts and stops the profiler trace around the host loops of its window."""

    def __init__(self, window: ProfileWindow):
        self._window = window

    def before_loop(self, start_step: int, num_steps: int) -> None:
        self._window.before_loop(start_step, num_steps)

    def after_loop(self, result: LoopResult) -> None:
        self._window.after_loop(result.end_step)

    def close(self) -> None:
        self._window.stop()


class ThroughputAction(LoopActionBase):
    """Adds the monitor's throughput, input wait, FLOP/s, MFU and memory scalars to each loop's."""

    def __init__(self, monitor: TrainMonitor):
        self._monitor = monitor

    def after_loop(self, result: LoopResult) -> None:
        result.scalars.update(self._monitor.loop_scalars(result.num_steps, result.seconds))


class SummaryAction(LoopActionBase):
    """Writes each loop's scalars to TensorBoard at its end step."""

    def __init__(self, writer: tf.summary.SummaryWriter):
        self._writer = writer

    def after_loop(self, result: LoopResult) -> None:
        summaries.write_scalars(self._writer, result.scalars, result.end_step)


class ProgressAction(LoopActionBase):
    """Moves the console progress bar (chief) and logs the loop's line."""

    def __init__(self, progress: Progress):
        self._progress = progress

    def after_loop(self, result: LoopResult) -> None:
        self._progress.update(result.end_step, result.num_steps, result.target_step, result.scalars)

    def close(self) -> None:
        self._progress.close()


class OperativeConfigAction(LoopActionBase):
    """Writes the config gin actually used, once, after the first loop (when everything has been built)."""

    def __init__(self, model_dir: str, task: TaskInfo, writer: tf.summary.SummaryWriter):
        self._model_dir = model_dir
        self._task = task
        self._writer = writer
        self._written = False

    def after_loop(self, result: LoopResult) -> None:
        if self._written:
            return
        self._written = True
        if not self._task.is_chief:
            return
        config_text = gin.operative_config_str()
        write_atomically(os.path.join(self._model_dir, OPERATIVE_CONFIG_FILE), config_text)
        summaries.write_text(self._writer, "operative_config", summaries.markdown_code(config_text), result.end_step)
