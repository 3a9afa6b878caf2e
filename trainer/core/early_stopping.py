"""Early stopping: end training after `patience` evaluations without the best metric improving by `min_delta`."""

import json
import os

import tensorflow as tf

from trainer.core.eval_report import is_number
from trainer.observe import summaries


class EarlyStopping:
    """Follows the chosen metric over a run's evaluations and says when to stop.

    An evaluation improves when its value exceeds the best so far by more than `min_delta` (the first one
    always does). After `patience` evaluations in a row that do not, `observe` returns a decision that stops.
    A resumed run replays the reports already written in `model_dir/eval/`, so it stops where an
    uninterrupted one would.
    """

    def __init__(self, metric: str, patience: int, min_delta: float):
        self.metric = metric
        self.patience = patience
        self.min_delta = min_delta
        self.best_value: float | None = None
        self.best_step: int | None = None
        self.without_improvement = 0
        self._seen_steps: set[int] = set()

    @property
    def stopped(self) -> bool:
        """Whether the evaluations seen so far already call for stopping (a resumed run that had stopped)."""
        return self.without_improvement >= self.patience

    def replay(self, model_dir: str) -> None:
        """Feeds the reports of earlier evaluations of this run (in step order) through `observe`."""
        pattern = os.path.join(model_dir, summaries.EVAL_SUBDIR, "metrics_step_*.json")
        for path in sorted(tf.io.gfile.glob(pattern)):
            with tf.io.gfile.GFile(path) as f:
                report = json.loads(f.read())
            if self.metric in report:
                self.observe(report)

    def observe(self, report: dict) -> dict:
        """Takes one evaluation's report; returns the decision, `stop` and the `reason` among it."""
        value, step = report.get(self.metric), int(report["step"])
        if step not in self._seen_steps:
            self._seen_steps.add(step)
            if is_number(value) and (self.best_value is None or value > self.best_value + self.min_delta):
                self.best_value, self.best_step, self.without_improvement = float(value), step, 0
            else:
                self.without_improvement += 1
        stop = self.stopped
        decision = {
            "stop": stop,
            "metric": self.metric,
            "best_value": self.best_value,
            "best_step": self.best_step,
            "evaluations_without_improvement": self.without_improvement,
            "patience": self.patience,
            "min_delta": self.min_delta,
        }
        if stop:
            decision["reason"] = (
                f"{self.metric} has not improved on {self.best_value} (step {self.best_step}) by more than "
                f"{self.min_delta} for {self.without_improvement} evaluations (evaluation.early_stopping_patience "
                f"= {self.patience})"
            )
        return decision
