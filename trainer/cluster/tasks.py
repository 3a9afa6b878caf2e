"""This process's place in the cluster, as the rest of the trainer needs it: its role, and whether it is the chief."""

import dataclasses

import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class TaskInfo:
    """Where this process stands in the cluster: its role and whether it is the chief."""

    task_type: str | None
    task_id: int
    is_chief: bool


def task_info(strategy: tf.distribute.Strategy) -> TaskInfo:
    """Reads this task's role from the strategy's cluster resolver (single-host strategies are the chief)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    task_id = getattr(resolver, "task_id", None) or 0
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and task_type is not None:
        has_chief = "chief" in resolver.cluster_spec().as_dict()
        is_chief = task_type == "chief" or (not has_chief and task_type == "worker" and task_id == 0)
    else:
        is_chief = True
    return TaskInfo(task_type=task_type, task_id=task_id, is_chief=is_chief)
