"""Reads a trainer's own throughput back from its TensorBoard event files (ours and Model Garden's alike)."""

import dataclasses
import glob
import os
import statistics

import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class Point:
    step: int
    wall_time: float
    value: float


def scalar_series(event_dir: str, tag: str) -> list[Point]:
    """Every value of scalar `tag` in the event files of `event_dir`, by step."""
    points = []
    for path in sorted(glob.glob(os.path.join(event_dir, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == tag:
                    number = float(tf.make_ndarray(value.tensor)) if value.HasField("tensor") else value.simple_value
                    points.append(Point(event.step, event.wall_time, number))
    if not points:
        raise ValueError(f"{event_dir}: no '{tag}' summaries; did the run train past its first host loop?")
    return sorted(points, key=lambda point: point.step)


@dataclasses.dataclass(frozen=True)
class Throughput:
    """A run's examples/s after its first host loop (which traces and compiles), two ways."""

    own_examples_per_second: float  # the trainer's own figure per loop, median over the loops after the first
    wall_examples_per_second: float  # steps between the first and last loop summaries over their wall time
    first_summary_wall_time: float  # when the first loop's summary was written (seconds since the epoch)
    timed_steps: int


def throughput(points: list[Point], global_batch_size: int, per_step: bool) -> Throughput:
    """From a per-loop rate series (`per_step`: steps/s, else examples/s); needs at least three loops."""
    if len(points) < 3:
        raise ValueError(f"expected summaries of at least 3 host loops, found {len(points)}.")
    scale = global_batch_size if per_step else 1
    first, last = points[0], points[-1]
    steps = last.step - first.step
    if last.wall_time <= first.wall_time:
        raise ValueError(f"the loop summaries at steps {first.step} and {last.step} carry no elapsed wall time.")
    return Throughput(
        own_examples_per_second=statistics.median(point.value * scale for point in points[1:]),
        wall_examples_per_second=steps * global_batch_size / (last.wall_time - first.wall_time),
        first_summary_wall_time=first.wall_time,
        timed_steps=steps,
    )
