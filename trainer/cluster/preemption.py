"""Preemption: SIGTERM stops the running host loop after the step in progress; that step is saved, then exit.

Schedulers (Kubernetes, Slurm, GCE spot VMs, Cloud TPU maintenance) send SIGTERM some seconds before they kill
a job. Python runs a signal handler only when the main thread gets back to Python, which inside a compiled host
loop of hundreds of steps is too late; so the C-level handler's wake-up fd is read by a watcher thread, which
sets a variable (`stop flag`) that the loop reads after every step. Under MultiWorkerMirrored the loop sums the
flags of all workers each step, so every worker stops after the same step and saves it.
"""

import dataclasses
import signal
import socket
import threading
import time
from collections.abc import Callable

import gin
import tensorflow as tf
from absl import logging

from trainer.common import validate
from trainer.common.errors import UserInputError

# The default exit code after a preemption checkpoint: 128 + SIGTERM, what a process killed by SIGTERM reports.
# Kubeflow's TFJob (restartPolicy ExitCode) retries exit codes 128-255 only, and the Kubernetes Job and Slurm
# scripts in deploy/ key on this value; the job is incomplete and should be restarted as is.
EXIT_CODE_PREEMPTED = 128 + signal.SIGTERM
# The exit code of a user error (`sys.exit(message)`), which no scheduler should retry.
EXIT_CODE_USER_ERROR = 1


@gin.configurable("preemption")
@dataclasses.dataclass(frozen=True)
class PreemptionConfig:
    """What a preemption may take and how the process reports it; gin `preemption.<field>`.

    Attributes:
      grace_seconds: the seconds the scheduler leaves between SIGTERM and SIGKILL (Kubernetes'
        `terminationGracePeriodSeconds`, 30 by default; Slurm's `--signal=TERM@<seconds>`). The log warns when a
        checkpoint of this model takes more than half of it to write.
      exit_code: the process exit code after a preemption checkpoint (2-255; the manifests in deploy/ retry it).
    """

    grace_seconds: float = 30.0
    exit_code: int = EXIT_CODE_PREEMPTED

    def __post_init__(self):
        validate.positive_number("gin binding preemption.grace_seconds", self.grace_seconds)
        validate.positive_int("gin binding preemption.exit_code", self.exit_code)
        if not EXIT_CODE_USER_ERROR < self.exit_code <= 255:
            raise UserInputError(
                f"gin binding preemption.exit_code: expected an exit code in 2-255 (1 is a user error, which no "
                f"scheduler should retry), received {self.exit_code}."
            )


class Preempted(Exception):
    """Training stopped on SIGTERM after saving a checkpoint; rerunning the same command resumes it."""

    def __init__(self, step: int, checkpoint: str | None, exit_code: int = EXIT_CODE_PREEMPTED):
        super().__init__(
            f"Preempted (SIGTERM): saved the checkpoint of step {step} ({checkpoint or 'in a worker directory'}) "
            f"and stopped; rerun the same command to resume (exit code {exit_code})."
        )
        self.step = step
        self.checkpoint = checkpoint
        self.exit_code = exit_code


def new_stop_flag() -> tf.Variable:
    """The variable a host loop reads after every step; True asks it to stop (create it outside any scope)."""
    with tf.device("/cpu:0"):
        return tf.Variable(False, trainable=False, name="stop_requested")


def needs_agreement(strategy: tf.distribute.Strategy) -> bool:
    """Whether the workers of `strategy` must agree on the step to stop after (MultiWorkerMirrored, > 1 worker)."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return False
    cluster = strategy.cluster_resolver.cluster_spec().as_dict()
    return sum(len(cluster.get(job, [])) for job in ("chief", "worker")) > 1


class PreemptionWatcher:
    """Turns SIGTERM into `stop_flag` = True at once; `check()` after each host loop saves and raises `Preempted`.

    Args:
      strategy: the run's strategy; under MultiWorkerMirrored only a stop the loop agreed on saves.
      save: forces a checkpoint of the current step and returns its path (or None on non-chief workers).
      current_step: returns the current global step.
      stop_flag: the variable the Trainer's host loop reads after every step (`new_stop_flag`).
      config: the grace period and exit code.
    """

    def __init__(
        self,
        strategy: tf.distribute.Strategy,
        save: Callable[[], str | None],
        current_step: Callable[[], int],
        stop_flag: tf.Variable,
        config: PreemptionConfig,
    ):
        self._save = save
        self._current_step = current_step
        self._stop_flag = stop_flag
        self._config = config
        self._agreement = needs_agreement(strategy)
        self._received = threading.Event()
        self._warned_slow_save = False
        self._previous_handler = None
        self._previous_wakeup_fd = -1
        self._sockets: tuple[socket.socket, socket.socket] | None = None
        self._thread: threading.Thread | None = None
        if threading.current_thread() is not threading.main_thread():
            logging.warning("Not in the main thread: SIGTERM will not trigger a preemption checkpoint.")
            return
        reader, writer = socket.socketpair()
        writer.setblocking(False)
        self._sockets = (reader, writer)
        self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
        self._previous_wakeup_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        self._thread = threading.Thread(target=self._watch, name="preemption-watcher", daemon=True)
        self._thread.start()

    def _on_sigterm(self, signum, frame) -> None:
        # Runs late (when the main thread is back in Python); the watcher thread has acted already.
        del signum, frame
        self._request_stop()

    def _watch(self) -> None:
        reader = self._sockets[0]
        while data := reader.recv(64):
            # The wake-up fd receives the number of every signal with a Python handler (SIGINT too); 0 is ours.
            if int(signal.SIGTERM) in data:
                self._request_stop()
            if 0 in data:
                return

    def _request_stop(self) -> None:
        if self._received.is_set():
            return
        self._received.set()
        self._stop_flag.assign(True)
        logging.warning(
            "SIGTERM received at step %d: stopping after the step in progress, then saving it (preemption."
            "grace_seconds=%g).",
            self._current_step(),
            self._config.grace_seconds,
        )

    def observe_save(self, seconds: float) -> None:
        """Notes how long a checkpoint took to write; warns once when it would not fit the grace period."""
        if seconds > self._config.grace_seconds / 2 and not self._warned_slow_save:
            self._warned_slow_save = True
            logging.warning(
                "A checkpoint of this model took %.1f s to write, more than half of preemption.grace_seconds=%g: "
                "a preemption checkpoint may be cut off by SIGKILL. Give the job a longer grace period (and set "
                "preemption.grace_seconds to it) or a faster checkpoint store.",
                seconds,
                self._config.grace_seconds,
            )

    def check(self, stopped: bool = False) -> None:
        """Saves and raises `Preempted` if the loop stopped for SIGTERM (or, on one worker, SIGTERM arrived).

        Args:
          stopped: whether the host loop stopped early on the stop flag (under MultiWorkerMirrored, every
            worker's loop stops after the same step, and only then do they save).
        """
        if not (stopped or (self._received.is_set() and not self._agreement)):
            return
        started = time.perf_counter()
        path = self._save()
        seconds = time.perf_counter() - started
        log = logging.warning if seconds > self._config.grace_seconds / 2 else logging.info
        log(
            "Preemption checkpoint of step %d written in %.2f s (preemption.grace_seconds=%g).",
            self._current_step(),
            seconds,
            self._config.grace_seconds,
        )
        raise Preempted(self._current_step(), path, self._config.exit_code)

    def close(self) -> None:
        """Restores the SIGTERM handler and wake-up fd that were in place before and stops the watcher thread."""
        if self._sockets is None:
            return
        signal.set_wakeup_fd(self._previous_wakeup_fd)
        signal.signal(signal.SIGTERM, self._previous_handler)
        reader, writer = self._sockets
        writer.setblocking(True)
        writer.send(b"\0")
        self._thread.join()
        reader.close()
        writer.close()
        self._sockets = None
