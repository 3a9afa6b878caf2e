"""The tf.distribute strategy factory and the facts about this task that the rest of the trainer needs."""

import dataclasses
import json
import os

import tensorflow as tf
from absl import logging

from trainer.config import ConfigError, FlagEnum


class StrategyName(FlagEnum):
    """The strategies `--strategy` accepts."""

    AUTO = "auto"
    ONE_DEVICE = "one_device"
    MIRRORED = "mirrored"
    MULTI_WORKER_MIRRORED = "multi_worker_mirrored"
    TPU = "tpu"

    @classmethod
    def flag_name(cls) -> str:
        return "--strategy"


def configure_virtual_cpus(count: int) -> None:
    """Splits the host CPU into `count` logical devices, so Mirrored can be tried without GPUs.

    Must run before TensorFlow initialises its runtime (before the first op); 0 or 1 leaves the CPU whole.
    """
    if count <= 1:
        return
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
        )
    except RuntimeError as error:
        raise ConfigError(
            f"--virtual_cpus={count}: TensorFlow was already initialised, so the CPU can no longer be split ({error})."
        ) from None


def _tf_config() -> dict:
    raw = os.environ.get("TF_CONFIG", "")
    if not raw:
        return {}
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ConfigError(f"TF_CONFIG is not valid JSON ({error}): {raw!r}.") from None
    if not isinstance(config, dict) or "cluster" not in config or "task" not in config:
        raise ConfigError(
            f"TF_CONFIG: expected a JSON object with 'cluster' and 'task' keys, received {raw!r}. Example: "
            '{"cluster": {"worker": ["host1:2222", "host2:2222"]}, "task": {"type": "worker", "index": 0}}.'
        )
    return config


def _num_tasks(tf_config: dict) -> int:
    return sum(len(hosts) for task_type, hosts in tf_config.get("cluster", {}).items() if task_type != "ps")


def _tpu_strategy(tpu: str | None) -> tf.distribute.TPUStrategy:
    if not tpu:
        raise ConfigError("--strategy=tpu needs --tpu: a TPU name, a grpc:// address, or 'local' on a TPU VM.")
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        if tpu != "local":
            tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, tf.errors.OpError, OSError, RuntimeError) as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError(
            f"--strategy=tpu --tpu={tpu}: no TPU could be reached from this machine ({first_line})."
        ) from None
    return tf.distribute.TPUStrategy(resolver)


def create_strategy(name: "str | StrategyName", tpu: str | None = None) -> tf.distribute.Strategy:
    """Builds the strategy `name`.

    `auto` picks tpu when `tpu` is given, multi_worker_mirrored when TF_CONFIG names several tasks, mirrored
    with more than one GPU, else one_device. Mirrored without GPUs uses every logical CPU.
    """
    name = StrategyName.parse(name)
    # Physical, not logical: listing logical devices initialises the runtime, after which
    # MultiWorkerMirrored can no longer configure its collective ops.
    gpus = tf.config.list_physical_devices("GPU")
    if name is StrategyName.AUTO:
        if tpu:
            name = StrategyName.TPU
        elif _num_tasks(_tf_config()) > 1:
            name = StrategyName.MULTI_WORKER_MIRRORED
        elif len(gpus) > 1:
            name = StrategyName.MIRRORED
        else:
            name = StrategyName.ONE_DEVICE
    if name is StrategyName.ONE_DEVICE:
        strategy = tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
    elif name is StrategyName.MIRRORED:
        devices = None if gpus else [d.name for d in tf.config.list_logical_devices("CPU")]
        strategy = tf.distribute.MirroredStrategy(devices)  # None: every local GPU
    elif name is StrategyName.MULTI_WORKER_MIRRORED:
        if not _tf_config():
            raise ConfigError("--strategy=multi_worker_mirrored needs the TF_CONFIG environment variable; it is unset.")
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    else:
        strategy = _tpu_strategy(tpu)
    logging.info(
        "Strategy %s (%s) with %d replicas.",
        name.value,
        type(strategy).__name__,
        strategy.num_replicas_in_sync,
    )
    return strategy


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
