"""The Controller: the outer loop around a Trainer — train until, evaluate every, checkpoint every.

After each host loop it hands a `LoopResult` to its actions, in order (throughput, summaries, progress, …);
a non-finite loss goes to the NaN policy instead; then it checkpoints and lets the preemption watcher act (a loop
stopped by SIGTERM ends the run with `Preempted`).
"""

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
from absl import logging

from trainer.cluster.preemption import PreemptionWatcher
from trainer.core.trainer import Trainer
from trainer.storage.checkpoints import Checkpointer


@dataclasses.dataclass
class LoopResult:
    """One host loop: where it started and ended, toward which step, how long it took, and its scalars."""

    start_step: int
    end_step: int
    target_step: int
    seconds: float
    scalars: dict[str, float]

    @property
    def num_steps(self) -> int:
        return self.end_step - self.start_step


class LoopAction(Protocol):
    """Something done around every host loop (an action may add scalars for the ones after it)."""

    def before_loop(self, start_step: int, num_steps: int) -> None: ...

    def after_loop(self, result: LoopResult) -> None: ...

    def close(self) -> None: ...


def float_scalars(outputs: dict[str, np.ndarray]) -> dict[str, float]:
    """Every float scalar of a loop's outputs (loss terms, norms, loss scale, …): each is a summary tag."""
    return {
        name: float(value)
        for name, value in outputs.items()
        if np.ndim(value) == 0 and np.issubdtype(np.asarray(value).dtype, np.floating)
    }


class NanPolicy:
    """What happens after a loop with a NaN/Inf loss or gradient norm: raise naming the step, or go back.

    With `attempts` > 0 the last checkpoint is restored and training continues with the batches that follow the
    bad one (the steps since the checkpoint are redone on new data), at most `attempts` times.
    """

    def __init__(self, checkpointer: Checkpointer, attempts: int, checkpoint_every_steps: int):
        self._checkpointer = checkpointer
        self._attempts = attempts
        self._checkpoint_every_steps = checkpoint_every_steps
        self._recoveries = 0

    def handle(self, start_step: int, outputs: dict[str, np.ndarray]) -> None:
        """Raises FloatingPointError, or restores the last checkpoint and returns."""
        bad_step = int(outputs["nonfinite_step"])
        message = (
            f"The training loss or gradient norm became NaN or Inf at step {bad_step} (host loop over steps "
            f"{start_step + 1}-{bad_step}; mean loss over those steps {outputs['loss']}, mean gradient norm "
            f"{outputs['gradient_norm']})."
        )
        if self._recoveries >= self._attempts:
            tried = f" after {self._attempts} recoveries (train.nan_recovery_attempts)" if self._attempts else ""
            raise FloatingPointError(
                f"{message} Stopping{tried}. Lower optimizer.learning_rate, set optimizer.global_clipnorm, or check "
                f"the input data; the last good checkpoint is in {self._checkpointer.directory}."
            )
        restored_step = self._checkpointer.restore_latest()
        if restored_step is None:
            raise FloatingPointError(
                f"{message} train.nan_recovery_attempts = {self._attempts}, but no checkpoint has been written yet "
                f"to go back to (train.checkpoint_every_steps = {self._checkpoint_every_steps})."
            )
        self._recoveries += 1
        logging.warning(
            "%s Restored the checkpoint of step %d; training continues with the batches after the bad one "
            "(recovery %d of %d).",
            message,
            restored_step,
            self._recoveries,
            self._attempts,
        )


class Controller:
    """Drives `trainer` in host loops of `steps_per_loop` steps, with checkpoints, evaluations and actions."""

    def __init__(
        self,
        trainer: Trainer,
        checkpointer: Checkpointer,
        steps_per_loop: int,
        *,
        nan_policy: NanPolicy,
        actions: Sequence[LoopAction] = (),
        preemption: Callable[[], PreemptionWatcher] | None = None,
    ):
        self._trainer = trainer
        self._checkpointer = checkpointer
        self._steps_per_loop = steps_per_loop
        self._nan_policy = nan_policy
        self._actions = tuple(actions)
        self._make_preemption = preemption
        self.preemption: PreemptionWatcher | None = None

    @property
    def step(self) -> int:
        return self._trainer.step

    def train(self, target_step: int) -> None:
        """Trains until the global step reaches `target_step`; checkpoints on the way and at the end."""
        if self.preemption is None and self._make_preemption is not None:
            self.preemption = self._make_preemption()
        while self.step < target_step:
            start_step = self.step
            num_steps = min(self._steps_per_loop, target_step - start_step)
            for action in self._actions:
                action.before_loop(start_step, num_steps)
            started = time.perf_counter()
            outputs = self._trainer.train(num_steps)
            result = LoopResult(start_step, self.step, target_step, time.perf_counter() - started, {})
            if not outputs["all_finite"]:
                self._nan_policy.handle(start_step, outputs)
                continue
            result.scalars.update(float_scalars(outputs))
            for action in self._actions:
                action.after_loop(result)
            saving = time.perf_counter()
            saved = self._checkpointer.save(force=result.end_step >= target_step)
            if self.preemption is not None:
                if saved:
                    self.preemption.observe_save(time.perf_counter() - saving)
                self.preemption.check(stopped=bool(outputs.get("stopped", False)))

    def train_and_evaluate(self, final_step: int, eval_every: int, evaluate: Callable[[], dict]) -> dict:
        """Trains to `final_step`, evaluating at every multiple of `eval_every` and at the end; the last report.

        Stops early when a report's `early_stopping` decision says so (`evaluation.early_stopping_patience`).
        """
        report = None
        while self.step < final_step:
            next_eval = (self.step // eval_every + 1) * eval_every
            self.train(min(next_eval, final_step))
            report = evaluate()
            decision = report.get("early_stopping") or {}
            if decision.get("stop"):
                logging.info(
                    "Early stopping at step %d of %d: %s. The best checkpoint is in best/.",
                    self.step,
                    final_step,
                    decision["reason"],
                )
                return report
        return report or evaluate()

    def close(self) -> None:
        """Closes the actions and restores what the preemption watcher replaced (the SIGTERM handler)."""
        if self.preemption is not None:
            self.preemption.close()
        for action in self._actions:
            action.close()
