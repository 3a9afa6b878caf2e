"""Runs a multi-worker job on this machine: N trainer processes with TF_CONFIG, restarted together on a failure.

This is what a cluster scheduler does for a MultiWorkerMirrored job (one TF_CONFIG per worker, and the whole
job restarted when one worker dies: the survivors cannot take another synchronous step without it), so it is
the way to try multi-worker training, and its fault tolerance, on one machine. Training resumes from the
last checkpoint in the shared `--model_dir` after each restart.

Imports no TensorFlow: the launcher stays small and starts at once.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TextIO

from trainer.common import validate
from trainer.common.errors import UserInputError

LAUNCHER_PREFIX = "[launch]"
# Flags the launcher sets itself through TF_CONFIG; passing them too would describe the cluster twice.
_CLUSTER_FLAGS = ("--worker_hosts", "--task_index")
# The directory holding the `trainer` package: workers import this copy, wherever they are started from.
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# After SIGTERM (forwarded from the launcher's own SIGTERM or Ctrl-C), how long workers get to save and exit.
_STOP_GRACE_SECONDS = 60.0


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Returns `count` distinct TCP ports that were free on `host` a moment ago (the OS picks them)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def worker_tf_config(hosts: Sequence[str], index: int) -> str:
    """The TF_CONFIG of worker `index` in a cluster of `hosts` (worker 0 is the chief)."""
    return json.dumps({"cluster": {"worker": list(hosts)}, "task": {"type": "worker", "index": index}})


def exit_code(returncode: int) -> int:
    """A process's return code as a shell reports it: 128 + N for death by signal N."""
    return 128 - returncode if returncode < 0 else returncode


class _Output:
    """Writes whole lines to one stream from several threads."""

    def __init__(self, stream: TextIO):
        self._stream = stream
        self._lock = threading.Lock()

    def line(self, prefix: str, text: str) -> None:
        with self._lock:
            self._stream.write(f"{prefix} {text.rstrip()}\n")
            self._stream.flush()


class _Worker:
    """One trainer process and the thread that copies its output, each line prefixed with `[worker i]`."""

    def __init__(self, index: int, command: list[str], env: dict[str, str], output: _Output):
        self.index = index
        self.process = subprocess.Popen(
            command,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            bufsize=1,
        )
        self._thread = threading.Thread(target=self._copy, args=(output,), daemon=True)
        self._thread.start()

    def _copy(self, output: _Output) -> None:
        for line in self.process.stdout:
            output.line(f"[worker {self.index}]", line)

    def wait(self) -> int:
        """Waits for the process and its output; returns its exit code."""
        self.process.wait()
        self._thread.join()
        return exit_code(self.process.returncode)


class LocalJob:
    """N local workers of one trainer command, restarted all together up to `max_restarts` times on a failure.

    Args:
      num_workers: how many worker processes (each gets TF_CONFIG for a cluster of that many on 127.0.0.1).
      trainer_args: the trainer's flags, e.g. `--gin_file=... --model_dir=...`, the same for every worker.
      max_restarts: how many times the whole job is restarted after a worker fails.
      output: where the workers' prefixed output and the launcher's own lines go.
      python: the interpreter that runs `-m trainer`.
      env: the workers' environment before TF_CONFIG is added; this process's by default.
      poll_seconds: how often the workers' states are checked.
    """

    def __init__(
        self,
        num_workers: int,
        trainer_args: Sequence[str],
        max_restarts: int = 0,
        output: TextIO = sys.stdout,
        python: str = sys.executable,
        env: Mapping[str, str] | None = None,
        poll_seconds: float = 0.2,
    ):
        validate.positive_int("--workers", num_workers)
        validate.non_negative_int("--max_restarts", max_restarts)
        for arg in trainer_args:
            if arg.split("=")[0] in _CLUSTER_FLAGS:
                raise UserInputError(
                    f"trainer flag {arg}: expected no --worker_hosts/--task_index after `--`, since the launcher "
                    "describes the cluster to every worker in TF_CONFIG; drop it."
                )
        self.num_workers = num_workers
        self.trainer_args = list(trainer_args)
        self.max_restarts = max_restarts
        self.python = python
        self.env = dict(os.environ if env is None else env)
        self.poll_seconds = poll_seconds
        self._output = _Output(output)
        self._stop_requested = threading.Event()
        self._workers: list[_Worker] = []
        self._workers_lock = threading.Lock()

    def log(self, text: str) -> None:
        """Writes one line of the launcher's own, prefixed with `[launch]`."""
        self._output.line(LAUNCHER_PREFIX, text)

    def request_stop(self) -> None:
        """Forwards SIGTERM to every worker (they checkpoint and exit) and restarts nothing afterwards."""
        self._stop_requested.set()
        with self._workers_lock:
            for worker in self._workers:
                if worker.process.poll() is None:
                    worker.process.terminate()

    def run(self) -> int:
        """Runs the job; returns 0 when every worker finished, else the exit code of the worker that failed last."""
        code = 0
        for attempt in range(self.max_restarts + 1):
            code = self._run_attempt(attempt)
            if code == 0 or self._stop_requested.is_set():
                return code
            if attempt < self.max_restarts:
                self.log(f"restarting all {self.num_workers} workers ({attempt + 1} of {self.max_restarts} restarts)")
        self.log(f"giving up after {self.max_restarts} restarts; exit code {code}")
        return code

    def _run_attempt(self, attempt: int) -> int:
        hosts = [f"127.0.0.1:{port}" for port in free_ports(self.num_workers)]
        command = [self.python, "-m", "trainer", *self.trainer_args]
        self.log(f"attempt {attempt + 1}: {self.num_workers} workers at {','.join(hosts)}: {' '.join(command)}")
        with self._workers_lock:
            self._workers = []
            for index in range(self.num_workers):
                python_path = os.pathsep.join(p for p in (_PACKAGE_PARENT, self.env.get("PYTHONPATH")) if p)
                env = dict(
                    self.env,
                    TF_CONFIG=worker_tf_config(hosts, index),
                    PYTHONPATH=python_path,
                    PYTHONUNBUFFERED="1",
                )
                worker = _Worker(index, command, env, self._output)
                self._workers.append(worker)
                self.log(f"worker {index}: pid {worker.process.pid}")
        if self._stop_requested.is_set():
            self.request_stop()
        failed = None
        while failed is None:
            codes = [worker.process.poll() for worker in self._workers]
            failed = next((w for w, c in zip(self._workers, codes, strict=True) if c not in (None, 0)), None)
            if all(c == 0 for c in codes):
                break
            time.sleep(self.poll_seconds)
        if failed is not None:
            code = failed.wait()
            self.log(f"worker {failed.index} exited with code {code}; stopping the others")
            self._stop_others(failed)
            return code
        for worker in self._workers:
            worker.wait()
        self.log(f"all {self.num_workers} workers finished")
        return 0

    def _stop_others(self, failed: _Worker) -> None:
        survivors = [w for w in self._workers if w is not failed and w.process.poll() is None]
        if self._stop_requested.is_set():
            # A stop was asked for: the workers got SIGTERM and save a checkpoint if they can.
            deadline = time.monotonic() + _STOP_GRACE_SECONDS
            for worker in survivors:
                try:
                    worker.process.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    worker.process.kill()
        else:
            # SIGKILL, not SIGTERM: without the lost worker the survivors can take no synchronous step, nor
            # agree on a checkpoint; the last complete checkpoint is where the restart resumes.
            for worker in survivors:
                worker.process.kill()
        for worker in survivors:
            worker.wait()


def launch(
    num_workers: int,
    trainer_args: Sequence[str],
    max_restarts: int = 0,
    output: TextIO = sys.stdout,
    python: str = sys.executable,
) -> int:
    """Runs a `LocalJob`, forwarding SIGTERM and Ctrl-C to its workers; returns the job's exit code."""
    job = LocalJob(num_workers, trainer_args, max_restarts, output=output, python=python)

    def stop(signum: int, frame: object) -> None:
        del frame
        job.log(f"received signal {signum}: stopping the workers")
        job.request_stop()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return job.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
