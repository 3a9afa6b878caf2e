"""Profiler traces of chosen training steps: `--profile_steps=START,END` and the window that captures them."""

from collections.abc import Sequence

import tensorflow as tf
from absl import logging

from trainer.common.errors import UserInputError


def parse_profile_steps(value: "str | Sequence[str | int] | None") -> tuple[int, int] | None:
    """Parses `--profile_steps=START,END` into (START, END); None or empty means no profiling.

    Raises:
      UserInputError: unless it is two integers with 0 <= START < END.
    """
    if value is None or (isinstance(value, str | list | tuple) and not value):
        return None
    parts = value.split(",") if isinstance(value, str) else list(value)
    try:
        start, end = (int(str(part).strip()) for part in parts)
    except ValueError:
        start = end = None
    if start is None or not 0 <= start < end:
        text = value if isinstance(value, str) else ",".join(str(part) for part in value)
        raise UserInputError(
            f"--profile_steps={text}: expected START,END, two global steps with 0 <= START < END "
            "(e.g. --profile_steps=100,110), received something else."
        )
    return start, end


class ProfileWindow:
    """Captures a TensorBoard profiler trace of the training steps START to END (`--profile_steps`).

    The profiler can only start and stop between host loops (one `tf.function` call runs
    `train.steps_per_loop` steps), so the window is rounded out to loop boundaries: the trace starts before the
    loop that runs step START and stops after the first loop that reaches step END. With
    `train.steps_per_loop=50` and `--profile_steps=120,130` it covers steps 100 to 150. An evaluation that falls
    inside the window is traced too. The trace goes to `<logdir>/plugins/profile/<time>/`, where TensorBoard's
    Profile tab (`pip install tensorboard-plugin-profile`) finds it. Only the chief traces.
    """

    def __init__(self, steps: tuple[int, int] | None, logdir: str, enabled: bool = True):
        self._steps = steps if enabled else None
        self._logdir = logdir
        self._active = False
        self._done = steps is None

    def before_loop(self, start_step: int, num_steps: int) -> None:
        """Starts the trace if the loop about to run steps [start_step, start_step + num_steps) reaches START."""
        if self._steps is None or self._active or self._done:
            return
        start, end = self._steps
        if start_step + num_steps > start and start_step < end:
            logging.info(
                "Profiling from step %d (--profile_steps=%d,%d) into %s.", start_step, start, end, self._logdir
            )
            tf.profiler.experimental.start(self._logdir)
            self._active = True

    def after_loop(self, end_step: int) -> None:
        """Stops the trace once the loop that just ended reached END."""
        if self._active and end_step >= self._steps[1]:
            self.stop()

    def stop(self) -> None:
        """Stops and writes the trace if one is running (also called when the run ends inside the window)."""
        if self._active:
            tf.profiler.experimental.stop()
            self._active = False
            self._done = True
            logging.info("Profiler trace written under %s/plugins/profile.", self._logdir)
