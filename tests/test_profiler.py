"""`--profile_steps` parsing and the profiler window rounded out to host loops."""

import pytest
import tensorflow as tf

from trainer.common.errors import UserInputError
from trainer.observe.profiler import ProfileWindow, parse_profile_steps


@pytest.mark.parametrize("value", [None, "", []])
def test_no_profile_steps_means_no_profiling(value):
    assert parse_profile_steps(value) is None


@pytest.mark.parametrize("value,expected", [("100,110", (100, 110)), (" 0, 5", (0, 5)), (["3", "4"], (3, 4))])
def test_profile_steps_parse(value, expected):
    assert parse_profile_steps(value) == expected


@pytest.mark.parametrize("value", ["100", "110,100", "5,5", "a,b", "1,2,3", "-1,4"])
def test_bad_profile_steps_are_a_config_error_naming_the_flag(value):
    with pytest.raises(UserInputError, match=f"--profile_steps={value}: expected START,END"):
        parse_profile_steps(value)


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
    window = ProfileWindow(steps, "/tmp/logdir")
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
    window = ProfileWindow((10, 1000), "/tmp/logdir")
    window.before_loop(0, 50)
    window.after_loop(50)
    assert calls == [("start", "/tmp/logdir")]
    window.stop()
    window.stop()
    assert calls == [("start", "/tmp/logdir"), ("stop",)]


def test_non_chief_tasks_do_not_profile(monkeypatch):
    calls = _record_profiler_calls(monkeypatch)
    window = ProfileWindow((0, 10), "/tmp/logdir", enabled=False)
    window.before_loop(0, 50)
    window.after_loop(50)
    window.stop()
    assert calls == []
