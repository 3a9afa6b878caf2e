"""The benchmarks read each trainer's throughput back from its own TensorBoard summaries."""

import pytest
import tensorflow as tf

from devtools.bench import events


def test_throughput_skips_the_first_loop_and_counts_the_wall_clock_between_summaries(tmp_path):
    writer = tf.summary.create_file_writer(str(tmp_path))
    with writer.as_default():
        for step, rate in ((5, 1.0), (10, 4.0), (15, 6.0), (20, 5.0)):
            tf.summary.scalar("examples_per_sec", rate, step=step)
    writer.close()
    read = events.scalar_series(str(tmp_path), "examples_per_sec")
    assert [(p.step, p.value) for p in read] == [(5, 1.0), (10, 4.0), (15, 6.0), (20, 5.0)]
    # One loop summary every 2 s of wall clock, as a run would write them.
    points = [events.Point(p.step, 100.0 + 2.0 * i, p.value) for i, p in enumerate(read)]
    result = events.throughput(points, global_batch_size=8, per_step=False)
    assert result.own_examples_per_second == 5.0  # median of 4, 6, 5: the first loop (tracing) is left out
    assert result.timed_steps == 15
    assert result.wall_examples_per_second == pytest.approx(15 * 8 / 6.0)
    steps_per_second = events.throughput(points, global_batch_size=8, per_step=True)
    assert steps_per_second.own_examples_per_second == 40.0


def test_a_missing_tag_and_too_few_loops_are_errors(tmp_path):
    with pytest.raises(ValueError, match="no 'examples_per_sec' summaries"):
        events.scalar_series(str(tmp_path), "examples_per_sec")
    with pytest.raises(ValueError, match="at least 3 host loops"):
        events.throughput([events.Point(5, 0.0, 1.0), events.Point(10, 1.0, 1.0)], 8, per_step=False)
