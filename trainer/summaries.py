"""TensorBoard writers for the train and eval streams, and small helpers to write into them."""

import os
from collections.abc import Sequence

import tensorflow as tf

from trainer.distribute import TaskInfo

TRAIN_SUBDIR = "train"
EVAL_SUBDIR = "eval"


class SummaryWriters:
    """One writer per stream under `model_dir`; non-chief tasks get no-op writers so only the chief writes.

    Only the `streams` a job writes get an event file. TensorBoard polls only the newest event file of a
    directory, so an unused one (a training job's `eval/` writer) would hide an evaluation job's events there.
    """

    def __init__(self, model_dir: str, task: TaskInfo, streams: Sequence[str] = (TRAIN_SUBDIR, EVAL_SUBDIR)):
        def writer(stream: str) -> tf.summary.SummaryWriter:
            if task.is_chief and stream in streams:
                return tf.summary.create_file_writer(os.path.join(model_dir, stream))
            return tf.summary.create_noop_writer()

        self.train = writer(TRAIN_SUBDIR)
        self.eval = writer(EVAL_SUBDIR)

    def close(self) -> None:
        """Flushes and closes both writers."""
        self.train.close()
        self.eval.close()


def write_scalars(writer: tf.summary.SummaryWriter, scalars: dict[str, float], step: int) -> None:
    """Writes each `tag: value` as a scalar at `step` and flushes."""
    with writer.as_default(step=step):
        for tag, value in scalars.items():
            tf.summary.scalar(tag, value)
    writer.flush()


def write_text(writer: tf.summary.SummaryWriter, tag: str, text: str, step: int) -> None:
    """Writes `text` (shown as Markdown by TensorBoard) at `step` and flushes."""
    with writer.as_default(step=step):
        tf.summary.text(tag, text)
    writer.flush()
