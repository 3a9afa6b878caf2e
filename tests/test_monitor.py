"""The measurements behind the train scalars: input wait, FLOPs, and MFU against the one chained-matmul peak."""

import time

import pytest
import tensorflow as tf

from tests.helpers import mirrored_strategy, one_device_strategy, tiny_deeplab
from trainer.core import precision
from trainer.observe import flops, peak
from trainer.observe.config import ObserveConfig
from trainer.observe.monitor import InputWaitTimer, TrainMonitor
from trainer.tools.model_stats import model_statistics

SLEEP_SECONDS = 0.02


def _tiny_model(precision_name: str = "float32"):
    with precision.policy_scope(precision_name):
        model = tiny_deeplab()
    model(tf.zeros([1, 32, 32, 3]))
    return model


def _counting_loop(strategy):
    """A stand-in for the train loop: `next(iterator)` inside a tf.function over tf.range, like the host loop."""

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
    timer = InputWaitTimer(iter(strategy.distribute_datasets_from_function(_slow_dataset(SLEEP_SECONDS))))
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


def test_monitor_flops_are_three_forward_passes_of_the_model_stats_count():
    model = _tiny_model()
    monitor = TrainMonitor(one_device_strategy(), model, 4, (32, 32), ObserveConfig(peak_flops_per_sec=1e9))
    forward = model_statistics(model, 32, 32)["gflops_per_image"] * 1e9
    assert flops.forward_flops_per_image(model, 32, 32).total == pytest.approx(forward, rel=1e-9)
    assert monitor.flops_per_example == pytest.approx(3 * forward, rel=1e-9)


def test_loop_scalars_divide_achieved_flops_by_the_bound_peak():
    strategy = mirrored_strategy()
    with strategy.scope():
        model = _tiny_model()
    config = ObserveConfig(peak_flops_per_sec=1e9)
    monitor = TrainMonitor(strategy, model, global_batch_size=4, crop_size=(32, 32), config=config)
    scalars = monitor.loop_scalars(num_steps=10, elapsed_seconds=2.0)
    flops_per_example = 3 * flops.forward_flops_per_image(model, 32, 32).total
    assert scalars["steps_per_sec"] == 5.0 and scalars["examples_per_sec"] == 20.0
    assert scalars["flops_per_sec"] == pytest.approx(20.0 * flops_per_example)
    assert scalars["mfu"] == pytest.approx(20.0 * flops_per_example / (1e9 * 2))  # two replicas
    assert 0 < scalars["host_memory_gib"] < 1024
    assert "input_wait_fraction" not in scalars  # no iterator was timed
    assert "ema_decay" not in scalars
    assert monitor.describe()["peak_source"] == "observe.peak_flops_per_sec"


def _record_peak_calls(monkeypatch, flops_per_second=4e9):
    """Replaces peak.matmul_chain_peak (the benchmark's measurement) with a fake that records its arguments."""
    calls = []

    def fake_peak(dtype, size, strategy):
        calls.append((tf.as_dtype(dtype), size, strategy))
        return peak.Peak(dtype=dtype.name, flops_per_second=flops_per_second, seconds=(1.0,), size=size, chain=10)

    monkeypatch.setattr(peak, "matmul_chain_peak", fake_peak)
    return calls


@pytest.mark.parametrize("precision_name,dtype", [("float32", tf.float32), ("mixed_bfloat16", tf.bfloat16)])
def test_unbound_peak_is_the_chained_matmul_peak_per_replica_in_the_compute_dtype(monkeypatch, precision_name, dtype):
    calls = _record_peak_calls(monkeypatch)
    strategy = mirrored_strategy()
    with strategy.scope():
        model = _tiny_model(precision_name)
    monitor = TrainMonitor(strategy, model, 4, (32, 32), ObserveConfig(peak_matmul_size=512))
    scalars = monitor.loop_scalars(num_steps=10, elapsed_seconds=2.0)
    scalars = monitor.loop_scalars(num_steps=10, elapsed_seconds=2.0)
    # Measured once, on every replica of the training strategy, in the dtype the model computes in (the global
    # policy is float32 again after the model was built).
    assert calls == [(dtype, 512, strategy)]
    assert scalars["mfu"] == pytest.approx(scalars["flops_per_sec"] / (4e9 * 2))
    assert monitor.describe()["peak_flops_per_sec_per_replica"] == 4e9
    assert monitor.describe()["peak_source"] == "measured"


def test_peak_measured_under_a_strategy_is_per_replica():
    # The real measurement, small: each of the two replicas runs its own chain.
    result = peak.matmul_chain_peak(tf.float32, size=64, chain=2, repeats=2, strategy=mirrored_strategy())
    assert len(result.seconds) == 2 and result.size == 64 and result.dtype == "float32"
    assert result.flops_per_second == pytest.approx(2 * 2 * 64**3 / min(result.seconds))
    one_device = peak.matmul_chain_peak(tf.bfloat16, size=64, chain=2, repeats=1, strategy=one_device_strategy())
    assert one_device.dtype == "bfloat16" and one_device.flops_per_second > 0
