"""TensorBoard writers and what is written with them: scalars and (Markdown) text.

Besides the loop's own outputs (losses, learning rate, norms), every host loop records what
`monitor.TrainMonitor` measures:

| tag | what |
|---|---|
| `steps_per_sec`, `examples_per_sec` | wall-clock throughput of the host loop (the first loop includes tracing) |
| `input_wait_fraction` | share of the loop's wall time spent blocked in `next()` on the input iterator |
| `flops_per_sec` | achieved model FLOP/s: examples/sec × training FLOPs per example (3 × the forward pass) |
| `mfu` | model FLOPs utilisation: `flops_per_sec` / (peak FLOP/s per replica × replicas), the peak of `peak.py` |
| `host_memory_gib` | resident memory of this process |
"""

import os
from collections.abc import Sequence

import tensorflow as tf

from trainer.cluster.tasks import TaskInfo

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

        self.train_dir = os.path.join(model_dir, TRAIN_SUBDIR)
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


def markdown_code(text: str) -> str:
    """Indents `text` by four spaces, which TensorBoard's Markdown renderer shows verbatim as a code block."""
    return "\n".join("    " + line for line in text.splitlines())
