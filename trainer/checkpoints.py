"""Saving and restoring training state under every strategy.

Under MultiWorkerMirrored every worker must call `save()` (variables are synchronised on read); only the
chief's copy is kept, the others write to a per-worker temporary directory that is removed afterwards.
"""

import os

import tensorflow as tf
from absl import logging

from trainer.distribute import TaskInfo

CHECKPOINT_SUBDIR = "checkpoints"


class Checkpointer:
    """Wraps `tf.train.CheckpointManager` with chief/non-chief directories and step bookkeeping."""

    def __init__(
        self,
        checkpoint: tf.train.Checkpoint,
        model_dir: str,
        task: TaskInfo,
        global_step: tf.Variable,
        max_to_keep: int,
        every_steps: int,
    ):
        self._checkpoint = checkpoint
        self._task = task
        self.directory = os.path.join(model_dir, CHECKPOINT_SUBDIR)
        if task.is_chief:
            directory = self.directory
        else:
            directory = os.path.join(model_dir, f".tmp_worker_{task.task_type}_{task.task_id}", CHECKPOINT_SUBDIR)
        self._write_directory = directory
        self._manager = tf.train.CheckpointManager(
            checkpoint,
            directory,
            max_to_keep=max_to_keep,
        )
        self._global_step = global_step
        self._every_steps = every_steps
        self._last_saved_step = 0

    @property
    def latest_checkpoint(self) -> str | None:
        """Path prefix of the chief's latest checkpoint, or None."""
        return tf.train.latest_checkpoint(self.directory)

    def restore_latest(self) -> int | None:
        """Restores the chief's latest checkpoint if there is one; returns its step, or None when starting fresh."""
        path = self.latest_checkpoint
        if path is None:
            logging.info("No checkpoint in %s: starting from step 0.", self.directory)
            return None
        self._checkpoint.restore(path).assert_existing_objects_matched()
        step = int(self._global_step.numpy())
        self._last_saved_step = step
        logging.info("Restored %s (step %d).", path, step)
        return step

    def save(self, force: bool = False) -> str | None:
        """Saves when the step crossed a multiple of `every_steps` since the last save, or when forced.

        Returns the chief's checkpoint path when one was written.
        """
        step = int(self._global_step.numpy())
        crossed_boundary = step // self._every_steps > self._last_saved_step // self._every_steps
        if step == self._last_saved_step or not (crossed_boundary or force):
            return None
        tf.io.gfile.makedirs(self._write_directory)
        path = self._manager.save(checkpoint_number=step)
        self._last_saved_step = step
        if not self._task.is_chief and path is not None:
            tf.io.gfile.rmtree(os.path.dirname(self._write_directory))
            return None
        if path is not None:
            logging.info("Saved checkpoint %s.", path)
        return path
