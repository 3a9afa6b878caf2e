"""Console progress: plain lines when not on a terminal, a bar on one, an ETA, a summary table, chief only."""

import io
import re

import pytest
from absl import logging

from trainer.observe import progress


class _Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(progress.time, "monotonic", clock)
    return clock


def _scalars(loss, examples_per_sec=32.0):
    return {"loss": loss, "examples_per_sec": examples_per_sec, "mfu": 0.25, "host_memory_gib": 1.5}


def test_non_interactive_output_is_one_plain_line_per_loop(clock):
    stream = io.StringIO()
    bar = progress.Progress(total_steps=300, stream=stream)  # StringIO is not a terminal
    clock.now += 30.0  # the first loop: tracing and compiling
    bar.update(100, 100, 300, _scalars(2.5))
    clock.now += 10.0
    bar.update(200, 100, 300, _scalars(1.25))
    clock.now += 10.0
    bar.update(300, 100, 300, _scalars(0.5))
    lines = stream.getvalue().splitlines()
    assert lines == [
        "step 100/300 (33%)  loss 2.5000  32.0 examples/s  ETA 1m 00s",
        "step 200/300 (67%)  loss 1.2500  32.0 examples/s  ETA 10s",
        "step 300/300 (100%)  loss 0.5000  32.0 examples/s  ETA 0s",
    ]
    assert "\r" not in stream.getvalue() and "\x1b" not in stream.getvalue()


def test_eta_forgets_the_first_loop_and_smooths_the_rest(clock):
    bar = progress.Progress(total_steps=1000, stream=io.StringIO())
    clock.now += 100.0
    bar.update(100, 100, 1000, {})
    assert bar.eta_seconds(100) == pytest.approx(900.0)  # 1 s/step, the only estimate so far
    clock.now += 10.0
    bar.update(200, 100, 1000, {})
    assert bar.eta_seconds(200) == pytest.approx(80.0)  # 0.1 s/step replaces the first loop's
    clock.now += 20.0  # an evaluation in between slows this interval: 0.2 s/step
    bar.update(300, 100, 1000, {})
    assert bar.eta_seconds(300) == pytest.approx(700 * (0.1 + 0.3 * (0.2 - 0.1)))


def test_summary_table_reports_steady_state_figures(clock):
    stream = io.StringIO()
    bar = progress.Progress(total_steps=200, stream=stream)
    clock.now += 65.0
    bar.update(100, 100, 200, _scalars(2.0, examples_per_sec=10.0))
    bar.update(200, 100, 200, _scalars(1.0, examples_per_sec=30.0))
    bar.close()
    table = stream.getvalue().split("Training summary\n", 1)[1]
    rows = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in table.splitlines() if not line.startswith("-"))
    assert rows["steps"] == "0 -> 200 of 200"
    assert rows["wall time"] == "1m 05s"
    assert rows["examples/sec"] == "30.0 (mean after the first loop)"
    assert rows["MFU"] == "25.0%"
    assert rows["last loss"] == "1.0000"
    assert rows["peak host memory"] == "1.50 GiB"


def test_resumed_run_summary_counts_from_the_restored_step(clock):
    stream = io.StringIO()
    bar = progress.Progress(total_steps=600, stream=stream)
    bar.update(500, 100, 600, {})
    bar.close()
    assert "400 -> 500 of 600" in stream.getvalue()


def test_nothing_trained_prints_no_table():
    stream = io.StringIO()
    progress.Progress(total_steps=10, stream=stream).close()
    assert stream.getvalue() == ""


def test_interactive_terminal_gets_a_bar_redrawn_in_place(clock):
    stream = io.StringIO()
    bar = progress.Progress(total_steps=100, stream=stream, interactive=True)
    bar.update(50, 50, 100, _scalars(1.0))
    bar.update(100, 50, 100, _scalars(0.5))
    output = stream.getvalue()
    assert "\r" in output and "|" in output
    assert "step 100/100 100%" in output
    assert output.rstrip().endswith("| loss 0.5000  32.0 examples/s  ETA 0s")


def test_other_workers_print_nothing_and_log_warnings_only(clock):
    previous = logging.get_verbosity()
    try:
        stream = io.StringIO()
        bar = progress.Progress(total_steps=100, is_chief=False, stream=stream)
        bar.update(100, 100, 100, _scalars(1.0))
        bar.close()
        assert stream.getvalue() == ""
        assert logging.get_verbosity() == logging.WARNING
    finally:
        logging.set_verbosity(previous)


@pytest.mark.parametrize(
    "seconds,text", [(0.4, "0s"), (59, "59s"), (61, "1m 01s"), (3599, "59m 59s"), (3661, "1h 01m"), (float("nan"), "?")]
)
def test_format_duration(seconds, text):
    assert progress.format_duration(seconds) == text
