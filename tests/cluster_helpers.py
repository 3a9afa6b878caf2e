"""Helpers for tests that run trainer workers as real processes on 127.0.0.1."""

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from tests.helpers import REPO_ROOT, SMOKE_GIN


def smoke_flags(data_dir: str, model_dir: str, *bindings: str) -> list[str]:
    """Trainer flags for the smoke config with its dataset under `data_dir`, then `bindings`."""
    return [
        f"--gin_file={SMOKE_GIN}",
        f"--gin_bindings=synthetic_shapes.data_dir='{data_dir}'",
        *(f"--gin_bindings={binding}" for binding in bindings),
        f"--model_dir={model_dir}",
        "--mode=train",
    ]


class Process:
    """A child process whose merged output is collected line by line, with a callback on each line."""

    def __init__(self, command: list[str], env: dict[str, str] | None = None, on_line: Callable | None = None):
        self.lines: list[str] = []
        self._on_line = on_line
        self.process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env or {})),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)
            if self._on_line is not None:
                self._on_line(self, line)

    def wait(self, timeout: float) -> int:
        """Waits for the process and its output; kills it and raises TimeoutExpired after `timeout` seconds."""
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise
        self._reader.join(timeout=30)
        return self.process.returncode

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()


def trainer(args: list[str], env: dict[str, str] | None = None, on_line: Callable | None = None) -> Process:
    """Starts `python -m trainer args` in the repository root."""
    return Process([sys.executable, "-m", "trainer", *args], env=env, on_line=on_line)


def wait_all(processes: list[Process], timeout: float) -> list[int]:
    """Waits for every process within one overall `timeout`; kills them all if it expires."""
    deadline = time.monotonic() + timeout
    try:
        return [p.wait(max(1.0, deadline - time.monotonic())) for p in processes]
    finally:
        for p in processes:
            p.kill()
