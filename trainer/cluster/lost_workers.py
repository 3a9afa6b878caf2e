"""Lost peers of a MultiWorkerMirrored job: the collective errors they cause, explained as a `WorkerLostError`."""

import contextlib
import re
from collections.abc import Iterator

import tensorflow as tf

from trainer.cluster.communication import MultiWorkerConfig
from trainer.cluster.placement import num_training_workers

# "/job:worker/replica:0/task:1" or "/job:worker/task:1", as TensorFlow's errors name tasks.
_TASK_PATTERN = re.compile(r"/job:(\w+)(?:/replica:\d+)?/task:(\d+)")


class WorkerLostError(RuntimeError):
    """A peer of a multi-worker job stopped (crashed, killed, preempted), so this worker cannot go on."""


def describe_lost_worker(error: tf.errors.OpError, strategy: tf.distribute.Strategy, config: MultiWorkerConfig) -> str:
    """Explains a collective failure of a multi-worker job: which worker was lost, how we know, what to do.

    Args:
      error: the collective op's error.
      strategy: the MultiWorkerMirrored strategy (anything with its `cluster_resolver`).
      config: the settings the strategy was built with, whose timeouts the explanation names.
    """
    message = str(error)
    resolver = strategy.cluster_resolver
    cluster = resolver.cluster_spec().as_dict()
    me = (resolver.task_type, resolver.task_id)
    # The coordination service lists the tasks whose heartbeats stopped after "unhealthy"; a broken gRPC
    # connection names its "remote target".
    _, heartbeat_lost, unhealthy = message.partition("unhealthy")
    named = [(job, int(task)) for job, task in _TASK_PATTERN.findall(unhealthy or message)]
    lost = list(dict.fromkeys(task for task in named if task != me))
    job_size = f"{num_training_workers(cluster)}-worker MultiWorkerMirrored job"
    if lost:
        if heartbeat_lost:
            how = (
                f"it sent no heartbeat for multi_worker.heartbeat_timeout_seconds={config.heartbeat_timeout_seconds} s"
            )
        else:
            how = f"the connection to it failed ({type(error).__name__})"
        what = (
            f"Lost {_task_names(lost, cluster)} of the {job_size}: {how}. It crashed, was killed or preempted: its "
            "own log says why."
        )
    elif isinstance(error, tf.errors.DeadlineExceededError):
        what = (
            f"A collective op of the {job_size} did not complete within multi_worker.timeout_seconds="
            f"{config.timeout_seconds} s: a worker is gone or stuck (or the timeout is shorter than a step)."
        )
    else:
        last_line = (message.strip().splitlines() or [type(error).__name__])[-1]
        what = f"A collective op of the {job_size} was aborted: a worker is gone ({last_line})."
    return (
        f"{what} This worker (/job:{me[0]}/task:{me[1]}) stops too. Restart every worker with the same command "
        "(locally, scripts/launch_local.py --max_restarts=K does it); training resumes from the last checkpoint "
        "in --model_dir."
    )


def _task_names(tasks: list[tuple[str, int]], cluster: dict) -> str:
    return ", ".join(
        f"/job:{job}/task:{task} ({cluster[job][task]})"
        if job in cluster and task < len(cluster[job])
        else f"/job:{job}/task:{task}"
        for job, task in tasks
    )


@contextlib.contextmanager
def lost_workers_reported(strategy: tf.distribute.Strategy, config: MultiWorkerConfig) -> Iterator[None]:
    """Turns the collective errors that a lost peer causes under MultiWorkerMirrored into a `WorkerLostError`.

    Args:
      strategy: the run's strategy; errors of other strategies pass through unchanged.
      config: the MultiWorkerMirrored settings `strategy` was built with.
    """
    try:
        yield
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError) as error:
        if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            raise
        raise WorkerLostError(describe_lost_worker(error, strategy, config)) from error
