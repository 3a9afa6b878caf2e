"""The measurements behind the train scalars: input wait, FLOPs and MFU, EMA decay, the profiler window."""

import time

import gin
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tests.helpers import mirrored_strategy, one_device_strategy
from trainer.common.errors import UserInputError
from trainer.models import DeepLabV3Plus, ResNet
from trainer.observe import summaries
from trainer.tools.model_stats import model_statistics

SLEEP_SECONDS = 0.02


def _tiny_model():
    model = DeepLabV3Plus(
        num_classes=3,
        backbone=ResNet(block_depths=(1, 1, 1, 1), base_filters=4, output_stride=16),
        aspp_filters=8,
        aspp_rates=(1, 2, 3),
        low_level_filters=4,
        decoder_filters=8,
    )
    model(tf.zeros([1, 32, 32, 3]))
    return model


def _counting_loop(strategy):
    """A stand-in for the train loop: `next(iterator)` inside a tf.function over tf.range, like trainer.core.loop."""

    @tf.function
    def train_loop(iterator, num_steps):
        total = tf.constant(0.0)
        for _ in tf.range(num_steps):
            batch = next(iterator)
            per_replica = strategy.run(lambda x: tf.reduce_sum(x), args=(batch,))
            total += strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
        return total

    return train_loop


def _slow_dataset(delay_seconds):
    def sleep(value):
        time.sleep(delay_seconds)
        return value

    def dataset_fn(context):
        dataset = tf.data.Dataset.range(1000).map(lambda i: tf.numpy_function(sleep, [i], tf.int64))
        return dataset.map(lambda i: tf.fill([2], tf.cast(i, tf.float32))).batch(1)

    return dataset_fn


@pytest.mark.parametrize("strategy_fn", [one_device_strategy, mirrored_strategy], ids=["one_device", "mirrored"])
def test_input_wait_covers_every_blocked_next_inside_the_compiled_loop(strategy_fn):
    strategy = strategy_fn()
    num_steps = 8
    # No prefetch in the pipeline: each step's `next()` blocks while the pipeline sleeps for its batch.
    timer = summaries.InputWaitTimer(iter(strategy.distribute_datasets_from_function(_slow_dataset(SLEEP_SECONDS))))
    train_loop = _counting_loop(strategy)
    started = time.perf_counter()
    total = float(train_loop(timer, tf.constant(num_steps)))
    elapsed = time.perf_counter() - started
    waited = timer.take_seconds()
    # Sleeps last at least their duration, so the wait is at least theirs (but for up to two batches the
    # distributed iterator may have buffered before the loop started); the loop's wall time bounds it above.
    assert (num_steps - 2) * SLEEP_SECONDS <= waited <= elapsed
    assert timer.take_seconds() == 0.0  # taking restarts the count
    expected_total = sum(range(num_steps * strategy.num_replicas_in_sync)) * 2
    assert total == expected_total  # the wrapper hands every batch through unchanged
    train_loop(timer, tf.constant(2))
    assert train_loop.experimental_get_tracing_count() == 1


def test_forward_flops_match_the_model_stats_tool():
    model = _tiny_model()
    expected = model_statistics(model, 32, 32)["gflops_per_image"] * 1e9
    assert summaries.forward_flops(model, 32, 32) == pytest.approx(expected, rel=1e-9)


def test_loop_scalars_divide_achieved_flops_by_the_bound_peak():
    strategy = mirrored_strategy()
    with strategy.scope():
        model = _tiny_model()
    config = summaries.ObserveConfig(peak_flops_per_sec=1e9)
    monitor = summaries.TrainMonitor(strategy, model, None, global_batch_size=4, crop_size=(32, 32), config=config)
    scalars = monitor.loop_scalars(num_steps=10, elapsed_seconds=2.0)
    flops_per_example = 3 * summaries.forward_flops(model, 32, 32)
    assert scalars["steps_per_sec"] == 5.0 and scalars["examples_per_sec"] == 20.0
    assert scalars["flops_per_sec"] == pytest.approx(20.0 * flops_per_example)
    assert scalars["mfu"] == pytest.approx(20.0 * flops_per_example / (1e9 * 2))  # two replicas
    assert 0 < scalars["host_memory_gib"] < 1024
    assert "input_wait_fraction" not in scalars  # no iterator was timed
    assert monitor.describe()["peak_source"] == "observe.peak_flops_per_sec"


def test_measured_peak_is_a_positive_rate():
    peak = summaries.measure_peak_flops_per_replica(one_device_strategy(), size=64, chain=2, repeats=2)
    assert np.isfinite(peak) and peak > 0


def test_ema_decay_is_read_from_the_optimizer_when_it_keeps_an_ema():
    assert summaries.ema_decay(keras.optimizers.Adam(use_ema=True, ema_momentum=0.995)) == pytest.approx(0.995)
    assert summaries.ema_decay(keras.optimizers.Adam()) is None
    assert summaries.ema_decay(None) is None


def test_observe_config_is_bound_in_gin_and_checked():
    gin.clear_config()
    try:
        gin.parse_config("observe.peak_flops_per_sec = 2e12")
        assert summaries.ObserveConfig().peak_flops_per_sec == 2e12
    finally:
        gin.clear_config()
    with pytest.raises(UserInputError, match="observe.peak_flops_per_sec"):
        summaries.ObserveConfig(peak_flops_per_sec=0)
    with pytest.raises(UserInputError, match="observe.num_eval_images"):
        summaries.ObserveConfig(num_eval_images=-1)


@pytest.mark.parametrize("value", [None, "", []])
def test_no_profile_steps_means_no_profiling(value):
    assert summaries.parse_profile_steps(value) is None


@pytest.mark.parametrize("value,expected", [("100,110", (100, 110)), (" 0, 5", (0, 5)), (["3", "4"], (3, 4))])
def test_profile_steps_parse(value, expected):
    assert summaries.parse_profile_steps(value) == expected


@pytest.mark.parametrize("value", ["100", "110,100", "5,5", "a,b", "1,2,3", "-1,4"])
def test_bad_profile_steps_are_a_config_error_naming_the_flag(value):
    with pytest.raises(UserInputError, match=f"--profile_steps={value}: expected START,END"):
        summaries.parse_profile_steps(value)


def _record_profiler_calls(monkeypatch):
    calls = []
    monkeypatch.setattr(tf.profiler.experimental, "start", lambda logdir: calls.append(("start", logdir)))
    monkeypatch.setattr(tf.profiler.experimental, "stop", lambda: calls.append(("stop",)))
    return calls


@pytest.mark.parametrize(
    "steps,traced_loops",
    [
        ((120, 130), [100]),  # inside one loop: that loop
        ((100, 150), [100]),  # exactly one loop
        ((140, 160), [100, 150]),  # across a boundary: both loops
        ((0, 1), [0]),
        ((10_000, 10_001), []),  # beyond the run: never starts
    ],
)
def test_profile_window_is_rounded_out_to_host_loops(monkeypatch, steps, traced_loops):
    calls = _record_profiler_calls(monkeypatch)
    window = summaries.ProfileWindow(steps, "/tmp/logdir")
    active_loops = []
    for start in range(0, 300, 50):
        window.before_loop(start, 50)
        if len(calls) % 2 == 1:  # a start without its stop yet: this loop is traced
            active_loops.append(start)
        window.after_loop(start + 50)
    window.stop()
    assert active_loops == traced_loops
    assert calls == ([("start", "/tmp/logdir"), ("stop",)] if traced_loops else [])


def test_profile_window_started_but_not_finished_is_stopped_at_the_end(monkeypatch):
    calls = _record_profiler_calls(monkeypatch)
    window = summaries.ProfileWindow((10, 1000), "/tmp/logdir")
    window.before_loop(0, 50)
    window.after_loop(50)
    assert calls == [("start", "/tmp/logdir")]
    window.stop()
    window.stop()
    assert calls == [("start", "/tmp/logdir"), ("stop",)]


def test_non_chief_tasks_do_not_profile(monkeypatch):
    calls = _record_profiler_calls(monkeypatch)
    window = summaries.ProfileWindow((0, 10), "/tmp/logdir", enabled=False)
    window.before_loop(0, 50)
    window.after_loop(50)
    window.stop()
    assert calls == []
