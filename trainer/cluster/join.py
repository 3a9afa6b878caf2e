"""Joining a multi-worker job: every training task must be reachable, within a bound, before TensorFlow's setup.

TensorFlow's cluster setup waits for a missing worker without end. Here each training task listens on the port
of its own address (closed again before TensorFlow's gRPC server takes it) and connects to every other task's
address until all of them answer, so a task that never starts is named, with its address, after
`multi_worker.join_timeout_seconds`.
"""

import errno
import socket
import time

from absl import logging

from trainer.common.errors import UserInputError

_TRAINING_JOBS = ("chief", "worker")


class JoinTimeoutError(RuntimeError):
    """A training task of a multi-worker job did not come up within the join timeout."""


def port_in_use_error(source: str, task: str, address: str, reason: str) -> UserInputError:
    """The error for a worker that cannot listen on the port of its own address."""
    return UserInputError(
        f"{source}: this worker ({task}) could not listen on the port of its address {address} ({reason}). "
        "Expected a free port: another process on this machine holds it (an earlier run still alive?). Stop that "
        "process or give this worker another port, in every worker's copy of the cluster description."
    )


def _listen(port: int) -> socket.socket:
    if socket.has_dualstack_ipv6():
        return socket.create_server(("", port), family=socket.AF_INET6, dualstack_ipv6=True, reuse_port=False)
    return socket.create_server(("", port))


def _reachable(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
            return True
    except OSError:  # refused, unresolvable (a pod not yet in DNS), unreachable: not up yet
        return False


def wait_for_peers(
    cluster: dict, task_type: str, task_id: int, timeout_seconds: float, source: str, poll_seconds: float = 0.5
) -> None:
    """Blocks until every other training task of `cluster` accepts connections, or raises after the timeout.

    Args:
      cluster: the cluster spec as a dict (job → addresses).
      task_type, task_id: this task.
      timeout_seconds: `multi_worker.join_timeout_seconds`.
      source: what described the cluster (TF_CONFIG, --worker_hosts, --cluster_from=...), for the errors.

    Raises:
      UserInputError: this task's own port is taken.
      JoinTimeoutError: some task was not reachable in time (names each, with its address).
    """
    me = f"/job:{task_type}/task:{task_id}"
    address = cluster[task_type][task_id]
    try:
        listener = _listen(int(address.rpartition(":")[2]))
    except OSError as error:
        if error.errno != errno.EADDRINUSE:
            raise
        raise port_in_use_error(source, me, address, "address already in use") from None
    pending = {
        f"/job:{job}/task:{index}": peer
        for job in _TRAINING_JOBS
        for index, peer in enumerate(cluster.get(job, []))
        if (job, index) != (task_type, task_id)
    }
    started = time.monotonic()
    try:
        while pending:
            pending = {task: peer for task, peer in pending.items() if not _reachable(peer)}
            if pending and time.monotonic() - started > timeout_seconds:
                missing = ", ".join(f"{task} ({peer})" for task, peer in pending.items())
                raise JoinTimeoutError(
                    f"{missing} did not join within multi_worker.join_timeout_seconds={timeout_seconds:g} s "
                    f"({source}): it is not running, or its address is not reachable from this worker ({me}, "
                    f"{address}). Start every worker with the same cluster description, or raise the timeout if "
                    "workers start slowly (image pulls, queued pods)."
                )
            if pending:
                time.sleep(poll_seconds)
    finally:
        listener.close()
    logging.info("All training tasks of the cluster reachable after %.1f s (%s).", time.monotonic() - started, me)
