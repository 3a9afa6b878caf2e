"""Console progress of a training run: one line per host loop, a bar on a terminal, a summary table at the end.

On an interactive terminal the line is a `tqdm` bar redrawn in place; otherwise (CI, a job scheduler's log
file, a pipe) each loop prints one plain line, e.g.

  step 150/3000 (5%)  loss 0.4321  128.4 examples/s  ETA 6m 12s

Only the chief prints; other workers of a multi-worker run print nothing and log at warning level, so a
cluster's logs are not N copies of the same progress.
"""

import math
import sys
import time
from typing import TextIO

import numpy as np
import tqdm
from absl import logging

# Weight of the newest interval in the running estimate of seconds per step (the ETA).
_ETA_SMOOTHING = 0.3


def format_duration(seconds: float) -> str:
    """Formats seconds as `45s`, `6m 12s` or `3h 05m`."""
    if not math.isfinite(seconds):
        return "?"
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


def format_table(rows: list[tuple[str, str]], title: str) -> str:
    """Formats (name, value) rows as a two-column text table under `title`."""
    width = max(len(name) for name, _ in rows)
    rule = "-" * (width + 2 + max(len(value) for _, value in rows))
    return "\n".join([title, rule, *(f"{name:<{width}}  {value}" for name, value in rows), rule])


class Progress:
    """Prints training progress; `update` after each host loop, `close` at the end of the run.

    The ETA divides the remaining steps by a running estimate of wall-clock seconds per step measured between
    updates, so checkpoints and evaluations in between are included; the first loop (tracing and compiling)
    is left out of the estimate once a second loop has run.

    Args:
      total_steps: the step the run trains to (`train.steps`).
      is_chief: only the chief prints; on other tasks absl logging is lowered to warnings.
      stream: where to print; stdout by default.
      interactive: whether to draw a bar; by default, whether `stream` is a terminal.
    """

    def __init__(
        self,
        total_steps: int,
        is_chief: bool = True,
        stream: TextIO | None = None,
        interactive: bool | None = None,
    ):
        self._total_steps = total_steps
        self._enabled = is_chief
        self._stream = stream or sys.stdout
        self._interactive = self._stream.isatty() if interactive is None else interactive
        if not is_chief:
            logging.set_verbosity(logging.WARNING)
        self._started = time.monotonic()
        self._last_update = self._started
        self._first_step: int | None = None
        self._step = 0
        self._seconds_per_step: float | None = None
        self._intervals = 0
        self._history: dict[str, list[float]] = {}
        self._bar: tqdm.tqdm | None = None

    def update(self, step: int, num_steps: int, segment_end: int, scalars: dict[str, float]) -> None:
        """Reports the end of a host loop at global `step`; `segment_end` is where this stretch of training stops.

        Args:
          step: the global step after the loop.
          num_steps: the steps the loop ran.
          segment_end: the step training runs to before something else (an evaluation) happens; the bar is
            closed there so that what follows prints below it.
          scalars: the loop's scalars (`loss`, `examples_per_sec`, ... as written to TensorBoard).
        """
        now = time.monotonic()
        if self._first_step is None:
            self._first_step = self._step = step - num_steps
        steps = step - self._step
        if steps > 0:
            seconds_per_step = (now - self._last_update) / steps
            # The first interval includes tracing; forget it as soon as a regular one is known.
            if self._seconds_per_step is None or self._intervals == 1:
                self._seconds_per_step = seconds_per_step
            else:
                self._seconds_per_step += _ETA_SMOOTHING * (seconds_per_step - self._seconds_per_step)
            self._intervals += 1
        for name, value in scalars.items():
            self._history.setdefault(name, []).append(float(value))
        previous_step, self._step, self._last_update = self._step, step, now
        if not self._enabled:
            return
        if self._interactive:
            self._draw_bar(previous_step, step, segment_end, scalars)
        else:
            print(self.line(step, scalars), file=self._stream, flush=True)

    def eta_seconds(self, step: int) -> float:
        """Estimated seconds until `total_steps`."""
        if self._seconds_per_step is None:
            return float("nan")
        return max(0, self._total_steps - step) * self._seconds_per_step

    def _metrics_text(self, step: int, scalars: dict[str, float]) -> str:
        parts = []
        if "loss" in scalars:
            parts.append(f"loss {scalars['loss']:.4f}")
        if "examples_per_sec" in scalars:
            parts.append(f"{scalars['examples_per_sec']:.1f} examples/s")
        parts.append(f"ETA {format_duration(self.eta_seconds(step))}")
        return "  ".join(parts)

    def line(self, step: int, scalars: dict[str, float]) -> str:
        """The plain progress line of a loop that ended at `step`."""
        percent = 100.0 * step / self._total_steps
        return f"step {step}/{self._total_steps} ({percent:.0f}%)  {self._metrics_text(step, scalars)}"

    def _draw_bar(self, previous_step: int, step: int, segment_end: int, scalars: dict[str, float]) -> None:
        if self._bar is None:
            self._bar = tqdm.tqdm(
                total=self._total_steps,
                initial=previous_step,
                file=self._stream,
                dynamic_ncols=True,
                mininterval=0,
                # The metrics go in `desc` (tqdm would put ", " before a postfix), at the end of the line.
                bar_format="step {n_fmt}/{total_fmt} {percentage:3.0f}%|{bar}| {desc}",
            )
        self._bar.set_description_str(self._metrics_text(step, scalars), refresh=False)
        self._bar.update(step - previous_step)
        if step >= segment_end:
            self._close_bar()

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def summary_rows(self) -> list[tuple[str, str]]:
        """The rows of the end-of-run table, from what the updates reported."""
        if self._first_step is None:
            return []
        rows = [
            ("steps", f"{self._first_step} -> {self._step} of {self._total_steps}"),
            ("wall time", format_duration(time.monotonic() - self._started)),
        ]

        def steady(name: str) -> float | None:
            # The mean over loops after the first (which includes tracing), or the only loop there was.
            values = self._history.get(name)
            if not values:
                return None
            return float(np.mean(values[1:] if len(values) > 1 else values))

        if (value := steady("examples_per_sec")) is not None:
            rows.append(("examples/sec", f"{value:.1f} (mean after the first loop)"))
        if (value := steady("flops_per_sec")) is not None:
            rows.append(("achieved TFLOP/s", f"{value / 1e12:.3g}"))
        if (value := steady("mfu")) is not None:
            rows.append(("MFU", f"{100 * value:.1f}%"))
        if (value := steady("input_wait_fraction")) is not None:
            rows.append(("waiting for input", f"{100 * value:.1f}% of loop time"))
        if self._history.get("loss"):
            rows.append(("last loss", f"{self._history['loss'][-1]:.4f}"))
        if self._history.get("host_memory_gib"):
            rows.append(("peak host memory", f"{max(self._history['host_memory_gib']):.2f} GiB"))
        return rows

    def close(self) -> None:
        """Closes the bar and prints the summary table (chief only, and only if training ran)."""
        self._close_bar()
        rows = self.summary_rows()
        if self._enabled and rows:
            print(format_table(rows, "Training summary"), file=self._stream, flush=True)
