"""Chaos testing: kill training runs at random steps (SIGKILL or SIGTERM), resume them, check nothing is lost.

The scheduler mode (`preempt_run`) does what Kubernetes and Slurm do: SIGTERM in the middle of a long host loop,
then SIGKILL if the process is still alive after the grace period.

Each trial trains a small config in a fresh model_dir, interrupts it one or more times at random steps, resumes
it to the end and compares the final checkpoint, variable by variable and bit for bit, with an uninterrupted
reference run. A checkpoint counts as lost when, after an interruption, the newest restorable checkpoint is
older than the last one the run reported saved.
"""

import dataclasses
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from trainer.cluster.preemption import EXIT_CODE_PREEMPTED

_STEP_LINE = re.compile(r"(?:^|\] )step (\d+)/(\d+)")
_SAVED_LINE = re.compile(r"Saved checkpoint \S*ckpt-(\d+)")
_SIGTERM_LINE = re.compile(r"SIGTERM received at step (\d+)")
_PREEMPTED_LINE = re.compile(r"Preempted \(SIGTERM\): saved the checkpoint of step (\d+)")
# Values that legitimately differ between an interrupted and an uninterrupted run: how many saves were made.
_BOOKKEEPING_KEYS = ("save_counter/",)


class TrainerProcess:
    """`python -m trainer <flags>` in a child process, with its logged steps and saves followed live."""

    def __init__(self, flags: Sequence[str], log_path: str, cwd: str | None = None, env: dict[str, str] | None = None):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env or {}))
        self._log = open(log_path, "a")  # noqa: SIM115  (closed in wait())
        self._process = subprocess.Popen(
            [sys.executable, "-m", "trainer", *flags],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=cwd,
        )
        self.last_step = 0
        self.saved_steps: list[int] = []
        self.sigterm_step: int | None = None
        self.preempted_step: int | None = None
        self._step_event = threading.Condition()
        self._reader = threading.Thread(target=self._follow, daemon=True)
        self._reader.start()

    def _follow(self) -> None:
        for line in self._process.stdout:
            self._log.write(line)
            with self._step_event:
                if match := _STEP_LINE.search(line):
                    self.last_step = int(match.group(1))
                if match := _SAVED_LINE.search(line):
                    self.saved_steps.append(int(match.group(1)))
                if match := _SIGTERM_LINE.search(line):
                    self.sigterm_step = int(match.group(1))
                if match := _PREEMPTED_LINE.search(line):
                    self.preempted_step = int(match.group(1))
                self._step_event.notify_all()

    def wait_for_step(self, step: int, timeout: float) -> bool:
        """Blocks until the run logged `step` (True) or exited or timed out (False)."""
        deadline = time.monotonic() + timeout
        with self._step_event:
            while self.last_step < step:
                if self._process.poll() is not None and not self._reader.is_alive():
                    return False
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._step_event.wait(min(remaining, 0.5))
        return True

    def send(self, signum: int) -> None:
        """Sends `signum` to the child."""
        self._process.send_signal(signum)

    def running(self) -> bool:
        return self._process.poll() is None

    def kill_if_running(self) -> None:
        """SIGKILLs the child unless it already exited (cleanup after a failed check)."""
        if self._process.poll() is None:
            self._process.kill()

    def wait(self, timeout: float) -> int:
        """Waits for the child to exit and returns its exit code (negative: killed by that signal)."""
        try:
            code = self._process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            code = self._process.wait()
        self._reader.join(timeout=10)
        self._log.close()
        return code


def checkpoint_values(model_dir: str) -> tuple[int, dict[str, np.ndarray]]:
    """Returns (step, {key: value}) of the newest checkpoint of `model_dir`, bookkeeping counters excluded."""
    path = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    if path is None:
        return 0, {}
    reader = tf.train.load_checkpoint(path)
    values = {
        key: reader.get_tensor(key)
        for key in reader.get_variable_to_shape_map()
        if key != "_CHECKPOINTABLE_OBJECT_GRAPH" and not key.startswith(_BOOKKEEPING_KEYS)
    }
    return int(values["global_step/.ATTRIBUTES/VARIABLE_VALUE"]), values


def mismatched_keys(expected: dict[str, np.ndarray], actual: dict[str, np.ndarray]) -> list[str]:
    """Keys whose values are not bitwise equal (or present on one side only)."""
    keys = sorted(expected.keys() | actual.keys())
    return [
        key
        for key in keys
        if key not in expected
        or key not in actual
        or expected[key].shape != actual[key].shape
        or expected[key].tobytes() != actual[key].tobytes()
    ]


@dataclasses.dataclass
class Interruption:
    """One interruption of a run: the signal, the step it was sent after, and what it left behind."""

    signal_name: str
    after_step: int
    exit_code: int
    last_reported_save: int
    restorable_step: int

    @property
    def lost_checkpoint(self) -> bool:
        return self.restorable_step < self.last_reported_save

    @property
    def exit_as_documented(self) -> bool:
        """SIGTERM: exit code 42 after saving; SIGKILL: killed by the signal (or finished before it landed)."""
        if self.signal_name == "SIGTERM":
            return self.exit_code in (EXIT_CODE_PREEMPTED, 0)
        return self.exit_code in (-signal.SIGKILL, 0)


@dataclasses.dataclass
class TrialResult:
    """What one chaos trial did and found."""

    interruptions: list[Interruption]
    final_step: int
    mismatched: list[str]

    @property
    def lost_checkpoints(self) -> int:
        return sum(interruption.lost_checkpoint for interruption in self.interruptions)


def train_to_completion(flags: Sequence[str], log_path: str, timeout: float, cwd: str | None = None) -> int:
    """Runs the trainer until it exits by itself; returns the exit code."""
    return TrainerProcess(flags, log_path, cwd).wait(timeout)


def interrupt_run(
    flags: Sequence[str],
    model_dir: str,
    signum: int,
    after_step: int,
    log_path: str,
    timeout: float,
    cwd: str | None = None,
) -> Interruption:
    """Starts (or resumes) a run, sends `signum` once it logged `after_step`, and records what survived."""
    start_step, _ = checkpoint_values(model_dir)
    process = TrainerProcess(flags, log_path, cwd)
    reached = process.wait_for_step(after_step, timeout)
    if reached:
        process.send(signum)
    exit_code = process.wait(timeout)
    restorable_step, _ = checkpoint_values(model_dir)
    return Interruption(
        signal_name=signal.Signals(signum).name,
        after_step=after_step if reached else -1,
        exit_code=exit_code,
        last_reported_save=max([start_step, *process.saved_steps]),
        restorable_step=restorable_step,
    )


def run_trial(
    rng: np.random.Generator,
    flags: Sequence[str],
    model_dir: str,
    total_steps: int,
    reference: dict[str, np.ndarray],
    max_interruptions: int,
    log_path: str,
    timeout: float = 600,
    cwd: str | None = None,
) -> TrialResult:
    """Interrupts a run 1..max_interruptions times at random steps, resumes it to the end, compares weights."""
    interruptions = []
    for _ in range(int(rng.integers(1, max_interruptions + 1))):
        start_step, _ = checkpoint_values(model_dir)
        if start_step >= total_steps - 1:
            break
        after_step = int(rng.integers(start_step + 1, total_steps))
        signum = signal.SIGKILL if rng.random() < 0.5 else signal.SIGTERM
        interruptions.append(interrupt_run(flags, model_dir, signum, after_step, log_path, timeout, cwd))
    exit_code = train_to_completion(flags, log_path, timeout, cwd)
    final_step, values = checkpoint_values(model_dir)
    mismatched = mismatched_keys(reference, values) if exit_code == 0 else ["<resumed run failed>"]
    return TrialResult(interruptions=interruptions, final_step=final_step, mismatched=mismatched)


@dataclasses.dataclass
class SchedulerStop:
    """One scheduler-style stop: SIGTERM, then SIGKILL after `grace_seconds` if the run was still alive."""

    sigterm_step: int | None
    preempted_step: int | None
    restorable_step: int
    exit_code: int
    killed_after_grace: bool
    seconds_to_exit: float

    @property
    def lost_checkpoint(self) -> bool:
        """The preemption checkpoint the run reported is not the newest restorable one."""
        return self.preempted_step is not None and self.restorable_step != self.preempted_step

    @property
    def steps_after_signal(self) -> int | None:
        """Steps run between the signal and the stop (None when the run finished or was killed)."""
        if self.sigterm_step is None or self.preempted_step is None:
            return None
        return self.preempted_step - self.sigterm_step


def preempt_run(
    flags: Sequence[str],
    model_dir: str,
    after_step: int,
    delay_seconds: float,
    grace_seconds: float,
    log_path: str,
    timeout: float,
    cwd: str | None = None,
) -> SchedulerStop:
    """Starts (or resumes) a run; `delay_seconds` after it logged `after_step`, SIGTERM; SIGKILL after the grace."""
    process = TrainerProcess(flags, log_path, cwd)
    signalled_at = None
    if process.wait_for_step(after_step, timeout):
        time.sleep(delay_seconds)
        signalled_at = time.monotonic()
        process.send(signal.SIGTERM)
    exit_code = process.wait(grace_seconds if signalled_at is not None else timeout)
    killed = exit_code == -signal.SIGKILL
    restorable_step, _ = checkpoint_values(model_dir)
    return SchedulerStop(
        sigterm_step=process.sigterm_step,
        preempted_step=process.preempted_step,
        restorable_step=restorable_step,
        exit_code=exit_code,
        killed_after_grace=killed,
        seconds_to_exit=time.monotonic() - signalled_at if signalled_at is not None else 0.0,
    )
