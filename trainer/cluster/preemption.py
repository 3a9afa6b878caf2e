"""Preemption: SIGTERM makes the job checkpoint at the next host-loop boundary and exit with a known code.

Schedulers (Kubernetes, Slurm, GCE spot VMs, Cloud TPU maintenance) send SIGTERM some seconds before they kill
a job. On one machine the trainer catches it itself; under MultiWorkerMirrored and TPU it uses TensorFlow's
`PreemptionCheckpointHandler`, which makes every worker agree on the step at which all of them save.
"""

import signal
import tempfile
import threading
from collections.abc import Callable

import tensorflow as tf
from absl import logging

# The process exit code after a preemption checkpoint: the job is incomplete and should be restarted as is.
# (TensorFlow's PreemptionCheckpointHandler uses the same code on Borg; restart wrappers key on it.)
EXIT_CODE_PREEMPTED = 42


class Preempted(Exception):
    """Training stopped on SIGTERM after saving a checkpoint; rerunning the same command resumes it."""

    def __init__(self, step: int, checkpoint: str | None):
        super().__init__(
            f"Preempted (SIGTERM): saved the checkpoint of step {step} ({checkpoint or 'in a worker directory'}) "
            f"and stopped; rerun the same command to resume (exit code {EXIT_CODE_PREEMPTED})."
        )
        self.step = step
        self.checkpoint = checkpoint


class PreemptionWatcher:
    """Watches for SIGTERM; `check()` after each host loop saves and raises `Preempted` once it arrived.

    Args:
      strategy: the run's strategy; multi-worker and TPU strategies use TensorFlow's handler so that all
        workers save at the same step.
      save: forces a checkpoint of the current step and returns its path (or None on non-chief workers).
      current_step: returns the current global step.
    """

    def __init__(
        self,
        strategy: tf.distribute.Strategy,
        save: Callable[[], str | None],
        current_step: Callable[[], int],
    ):
        self._save = save
        self._current_step = current_step
        self._received = threading.Event()
        self._previous_handler = None
        self._handler = None
        self._saved_path = None
        resolver = getattr(strategy, "cluster_resolver", None)
        multi_worker = resolver is not None and bool(resolver.cluster_spec().jobs)
        if multi_worker or isinstance(strategy, tf.distribute.TPUStrategy):
            self._handler = tf.distribute.experimental.PreemptionCheckpointHandler(
                resolver,
                # The handler's own checkpoint holds only its bookkeeping; the real one is written by `save`.
                tf.train.Checkpoint(),
                checkpoint_dir=tempfile.mkdtemp(prefix="preemption_"),
                termination_config=tf.distribute.experimental.TerminationConfig(
                    exit_fn=self._raise_preempted, save_fn=self._save_now
                ),
            )
        elif threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
        else:
            logging.warning("Not in the main thread: SIGTERM will not trigger a preemption checkpoint.")

    def _on_sigterm(self, signum, frame) -> None:
        del signum, frame
        logging.warning("SIGTERM received: saving a checkpoint at the end of the current loop, then exiting.")
        self._received.set()

    def _save_now(self, *args, **kwargs) -> None:
        del args, kwargs
        self._saved_path = self._save()

    def _raise_preempted(self) -> None:
        raise Preempted(self._current_step(), self._saved_path)

    def check(self) -> None:
        """Saves and raises `Preempted` if a SIGTERM arrived (anywhere in the cluster); else returns."""
        if self._handler is not None:
            self._handler.save_checkpoint_if_preempted()
            return
        if self._received.is_set():
            self._save_now()
            self._raise_preempted()

    def close(self) -> None:
        """Restores the SIGTERM handler that was in place before."""
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)
            self._previous_handler = None
