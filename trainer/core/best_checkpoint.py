"""The copy of the checkpoint that scored best on one metric, kept in `model_dir/best/` with an `info.json`."""

import json
import os

import tensorflow as tf
from absl import logging

from trainer.common.files import write_atomically
from trainer.core.eval_report import is_number
from trainer.storage import checkpoints

BEST_INFO_FILE = "info.json"
# Where continuous evaluation copies a checkpoint before reading it, so training may delete its own copy.
CANDIDATE_SUBDIR = ".candidate"


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
        return is_number(value) and (self.info is None or value > self.info["value"])

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
            CANDIDATE_SUBDIR,
            *(os.path.basename(f) for f in checkpoints.checkpoint_files(copy)),
        }
        for name in tf.io.gfile.listdir(self.directory):
            if name.rstrip("/") not in keep:
                tf.io.gfile.remove(os.path.join(self.directory, name))
        logging.info(
            "New best %s %.4f at step %d: copied %s to %s.", self.metric, value, report["step"], prefix, self.directory
        )
        return True
