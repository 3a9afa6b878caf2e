"""Finding, restoring, copying and saving checkpoints under every strategy, never losing the last good one.

Every lookup of a checkpoint (a prefix or a directory), every restore of weights and every copy of a
checkpoint's files goes through the functions here.

Under MultiWorkerMirrored every worker must call `save()` (variables are synchronised on read); only the
chief's copy is kept, the others write to a per-worker temporary directory that is removed afterwards.

TensorFlow writes a checkpoint's files under temporary names and records it in the `checkpoint` state file
only once it is complete, so a crash during a save leaves the previous checkpoint the latest one. On restore,
an unreadable latest checkpoint (e.g. a damaged data file) is reported and the one before it is used.
"""

import os
import re
import tempfile
from collections.abc import Sequence
from typing import TYPE_CHECKING

import tensorflow as tf
import tf_keras as keras
from absl import logging

from trainer.common.errors import UserInputError
from trainer.common.files import copy_atomically

if TYPE_CHECKING:  # only a type here: models (which restore checkpoints) must not import the cluster layer
    from trainer.cluster.tasks import TaskInfo

CHECKPOINT_SUBDIR = "checkpoints"
BEST_SUBDIR = "best"
# The root names under which the training checkpoint, `tf.train.Checkpoint(model=..., global_step=...)`, saves.
MODEL_KEY = "model"
STEP_KEY = "global_step/.ATTRIBUTES/VARIABLE_VALUE"
SAME_CONFIG_REMEDY = "Use the gin config the checkpoint was trained with (operative_config.gin beside it)."
# How many mismatched variables an incompatible-checkpoint error lists before summarising the rest.
_MAX_LISTED_MISMATCHES = 20
# What follows a prefix in the names of a checkpoint's own files (not of temporary files beside them).
_FILE_SUFFIX = re.compile(r"\.(index|data-\d+-of-\d+)")


# Saving reads the variables, which under MultiWorkerMirrored runs collectives: these errors mean a worker or
# collective failed during the save, not the disk.
_DISTRIBUTED_FAILURES = (
    tf.errors.UnavailableError,
    tf.errors.AbortedError,
    tf.errors.CancelledError,
    tf.errors.DeadlineExceededError,
)


def checkpoint_step(path: str) -> int | None:
    """The step in a checkpoint prefix's name (`.../ckpt-500` → 500), or None if it has no `-<step>` suffix."""
    match = re.search(r"-(\d+)$", path)
    return int(match.group(1)) if match else None


def latest_checkpoint(directory: str, what: str, remedy: str = "Train first.") -> str:
    """Returns the prefix of the newest checkpoint in `directory`.

    A directory without a `checkpoint` state file counts if it holds exactly one checkpoint (e.g. a copy).

    Raises:
      UserInputError: naming `what` (the flag or binding that chose the directory), if there is none.
    """
    prefix = tf.train.latest_checkpoint(directory)
    if prefix is None and tf.io.gfile.isdir(directory):
        indexes = tf.io.gfile.glob(os.path.join(directory, "*.index"))
        prefix = indexes[0][: -len(".index")] if len(indexes) == 1 else None
    if prefix is None:
        raise UserInputError(f"{what}: expected a checkpoint in {directory}, received none. {remedy}")
    return prefix


def resolve_checkpoint(path: str, what: str = "--checkpoint") -> str:
    """Returns the checkpoint prefix `path` names: `path` itself if it is a prefix, a directory's latest.

    Raises:
      UserInputError: naming `what` (the flag or binding `path` came from), if `path` is neither.
    """
    if tf.io.gfile.exists(f"{path}.index"):
        return path
    if tf.io.gfile.isdir(path):
        return latest_checkpoint(path, what, remedy="Pass a checkpoint prefix, or a directory holding one.")
    raise UserInputError(
        f"{what}: expected a checkpoint prefix (e.g. model_dir/checkpoints/ckpt-500, with a '.index' file next to "
        f"it) or a directory holding checkpoints (e.g. model_dir/best), received {path!r}, which is neither."
    )


def checkpoint_files(prefix: str) -> list[str]:
    """The files of the checkpoint at `prefix`: its `.index` and `.data-*-of-*` shards."""
    return sorted(f for f in tf.io.gfile.glob(f"{prefix}.*") if _FILE_SUFFIX.fullmatch(f[len(prefix) :]))


def copy_checkpoint(prefix: str, directory: str) -> str:
    """Copies the checkpoint at `prefix` into `directory` (each file atomically); returns the copy's prefix.

    Raises:
      tf.errors.NotFoundError: the checkpoint has no files, or they vanished during the copy.
    """
    sources = checkpoint_files(prefix)
    if not sources:
        raise tf.errors.NotFoundError(
            None, None, f"{prefix}: expected a checkpoint's .index and .data files, found none."
        )
    tf.io.gfile.makedirs(directory)
    for source in sources:
        copy_atomically(source, os.path.join(directory, os.path.basename(source)))
    return os.path.join(directory, os.path.basename(prefix))


def restore_checkpoint(
    checkpoint: tf.train.Checkpoint, prefix: str, what: str, remedy: str = SAME_CONFIG_REMEDY, partial: bool = False
) -> None:
    """Restores every object `checkpoint` tracks from `prefix`; with `partial`, the file may hold more.

    Raises:
      UserInputError: naming `what`, if the objects do not match the saved ones (the message lists how).
      tf.errors.OpError: the checkpoint's files are unreadable.
    """
    try:
        status = checkpoint.read(prefix)
        if partial:
            status.expect_partial()
        status.assert_existing_objects_matched()
    except (AssertionError, ValueError) as error:
        if not _is_incompatibility(error):
            raise
        raise UserInputError(
            f"{what}: checkpoint {prefix} does not match the model being built: it was written by a different "
            f"model or configuration. Mismatched variables:\n{describe_mismatch(checkpoint, prefix, partial)}\n"
            f"{remedy}"
        ) from None


def restore_model_weights(
    model: keras.Model, prefix: str, what: str, parts: Sequence[str] = (), remedy: str = SAME_CONFIG_REMEDY
) -> int | None:
    """Restores the model's weights (not the optimizer's) from the training checkpoint at `prefix`.

    Args:
      model: the built model.
      prefix: a checkpoint written by the trainer (the model saved as `MODEL_KEY`).
      what: the flag or binding the checkpoint came from, for errors.
      parts: names of the model's sub-layers to restore (e.g. "backbone"); empty: the whole model.
      remedy: what an error tells the user to do when the checkpoint does not match.

    Returns:
      The checkpoint's training step: its saved global step, else the `-<step>` of its name, else None.
    """
    tracked = tf.train.Checkpoint(**{name: getattr(model, name) for name in parts}) if parts else model
    restore_checkpoint(tf.train.Checkpoint(**{MODEL_KEY: tracked}), prefix, what, remedy, partial=True)
    reader = tf.train.load_checkpoint(prefix)
    return int(reader.get_tensor(STEP_KEY)) if reader.has_tensor(STEP_KEY) else checkpoint_step(prefix)


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (disk full, permissions); the previous one is intact."""


def _variable_shapes(path: str) -> dict[str, list[int]]:
    """Returns {checkpoint key: shape} of the variables saved at checkpoint prefix `path`."""
    return {
        name: shape
        for name, shape in tf.train.list_variables(path)
        if name.endswith("VARIABLE_VALUE") and not name.startswith("_CHECKPOINTABLE_OBJECT_GRAPH")
    }


def describe_mismatch(checkpoint: tf.train.Checkpoint, path: str, partial: bool = False) -> str:
    """Lists how the variables of `checkpoint` differ from those saved at `path` (missing, unexpected, shape).

    The expected keys come from writing `checkpoint` itself to a scratch directory, so they are named exactly
    as TensorFlow names them in `path`. With `partial`, variables the file holds beyond them are not listed.
    """
    with tempfile.TemporaryDirectory(prefix="checkpoint_probe_") as scratch:
        expected = _variable_shapes(checkpoint.write(os.path.join(scratch, "probe")))
    found = _variable_shapes(path)
    lines = []
    for key in sorted(expected.keys() & found.keys()):
        if list(expected[key]) != list(found[key]):
            lines.append(f"  shape differs: {key} model {expected[key]}, checkpoint {found[key]}")
    for key in sorted(expected.keys() - found.keys()):
        lines.append(f"  missing from the checkpoint: {key} {expected[key]}")
    for key in sorted(found.keys() - expected.keys() if not partial else ()):
        # A model that has not trained yet has no optimizer slots (they are made at the first update), so the
        # checkpoint's slots say nothing about a mismatch.
        if not key.startswith("optimizer/"):
            lines.append(f"  not in this model: {key} {found[key]}")
    if len(lines) > _MAX_LISTED_MISMATCHES:
        lines = lines[:_MAX_LISTED_MISMATCHES] + [f"  ... and {len(lines) - _MAX_LISTED_MISMATCHES} more"]
    return "\n".join(lines)


def _is_incompatibility(error: Exception) -> bool:
    """True for errors that mean "a different model" rather than "a damaged file"."""
    if isinstance(error, AssertionError):
        return True
    return isinstance(error, ValueError) and "shape" in str(error)


class Checkpointer:
    """Wraps `tf.train.CheckpointManager` with chief/non-chief directories and step bookkeeping."""

    def __init__(
        self,
        checkpoint: tf.train.Checkpoint,
        model_dir: str,
        task: "TaskInfo",
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
    def manager(self) -> tf.train.CheckpointManager:
        """The underlying manager (e.g. for TensorFlow's PreemptionCheckpointHandler)."""
        return self._manager

    @property
    def latest_checkpoint(self) -> str | None:
        """Path prefix of the chief's latest checkpoint, or None."""
        return tf.train.latest_checkpoint(self.directory)

    def _candidates(self) -> list[str]:
        """The chief's checkpoints, newest first."""
        state = tf.train.get_checkpoint_state(self.directory)
        if state is None:
            return []
        paths = list(state.all_model_checkpoint_paths) or [state.model_checkpoint_path]
        paths = [p if os.path.isabs(p) or "://" in p else os.path.join(self.directory, p) for p in paths]
        if state.model_checkpoint_path and paths[-1] != state.model_checkpoint_path:
            paths.append(state.model_checkpoint_path)
        return list(reversed(paths))

    def restore(self, path: str) -> int:
        """Restores the checkpoint at prefix `path`; returns its step.

        Raises:
          UserInputError: the checkpoint belongs to a different model (the message lists the mismatched variables).
          tf.errors.OpError: the checkpoint's files are unreadable.
        """
        restore_checkpoint(
            self._checkpoint,
            path,
            "--model_dir",
            "Use the gin config the checkpoint was trained with (operative_config.gin beside it), or start in a new "
            "--model_dir; to fine-tune from it, use init.checkpoint instead.",
        )
        step = int(self._global_step.numpy())
        self._last_saved_step = step
        return step

    def restore_latest(self) -> int | None:
        """Restores the newest readable checkpoint; returns its step, or None when starting fresh.

        An unreadable checkpoint (damaged or truncated files) is reported and the one before it is tried.
        """
        candidates = self._candidates()
        if not candidates:
            logging.info("No checkpoint in %s: starting from step 0.", self.directory)
            return None
        failures = []
        for path in candidates:
            try:
                step = self.restore(path)
            except (tf.errors.OpError, OSError) as error:
                first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                logging.error("Checkpoint %s is unreadable (%s); trying the previous one.", path, first_line)
                failures.append(f"{path}: {first_line}")
                continue
            if failures:
                logging.warning(
                    "Restored %s (step %d) after skipping %d unreadable newer checkpoint(s):\n  %s",
                    path,
                    step,
                    len(failures),
                    "\n  ".join(failures),
                )
            else:
                logging.info("Restored %s (step %d).", path, step)
            return step
        raise UserInputError(
            f"Every checkpoint in {self.directory} is unreadable:\n  "
            + "\n  ".join(failures)
            + "\nMove the directory aside to start afresh, or restore it from a backup."
        )

    def save(self, force: bool = False) -> str | None:
        """Saves when the step crossed a multiple of `every_steps` since the last save, or when forced.

        Returns the chief's checkpoint path when one was written.

        Raises:
          CheckpointWriteError: the write failed (e.g. disk full); the previous checkpoint is left intact.
        """
        step = int(self._global_step.numpy())
        crossed_boundary = step // self._every_steps > self._last_saved_step // self._every_steps
        if step == self._last_saved_step or not (crossed_boundary or force):
            return None
        tf.io.gfile.makedirs(self._write_directory)
        try:
            path = self._manager.save(checkpoint_number=step)
        except _DISTRIBUTED_FAILURES:
            raise  # a lost worker or aborted collective, not a write failure: reported as such upstream
        except (tf.errors.OpError, OSError) as error:
            self._remove_partial_files(step)
            previous = self._manager.latest_checkpoint
            raise CheckpointWriteError(
                f"Could not write the checkpoint of step {step} in {self._write_directory} (disk full or not "
                f"writable?): {str(error).strip().splitlines()[0]}. The previous checkpoint "
                f"{previous or '(none)'} is intact; free space or fix the permissions, then rerun the same command "
                "to resume from it."
            ) from error
        self._last_saved_step = step
        if not self._task.is_chief and path is not None:
            tf.io.gfile.rmtree(os.path.dirname(self._write_directory))
            return None
        if path is not None:
            logging.info("Saved checkpoint %s.", path)
        return path

    def _remove_partial_files(self, step: int) -> None:
        """Deletes what a failed save of `step` left behind (never a checkpoint listed in the state file)."""
        prefix = os.path.join(self._write_directory, f"ckpt-{step}")
        if prefix in set(self._manager.checkpoints):
            return
        for leftover in tf.io.gfile.glob(prefix + ".*") + tf.io.gfile.glob(prefix + "_temp*"):
            try:
                if tf.io.gfile.isdir(leftover):
                    tf.io.gfile.rmtree(leftover)
                else:
                    tf.io.gfile.remove(leftover)
            except (tf.errors.OpError, OSError) as error:
                logging.warning("Could not remove the partial checkpoint file %s: %s", leftover, error)
