"""The tf.distribute strategy factory: what `--strategy` names, what `auto` picks here, and the defaults it implies.

Where a job runs comes from a `Placement` (flags, or TF_CONFIG); how its replicas communicate from the
`MirroredConfig` and `MultiWorkerConfig` that the root builds from gin and hands to `create_strategy`.
"""

import tensorflow as tf
from absl import logging

# Private, and the only way (what MultiWorkerMirroredStrategy itself uses): no public API sets the coordination
# service's heartbeat timeout, which is what turns a dead worker into an error on the others instead of a hang.
from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
from tensorflow.python.eager import context as eager_context

from trainer.cluster import join
from trainer.cluster.communication import MirroredConfig, MultiWorkerConfig
from trainer.cluster.placement import (
    TF_CONFIG_EXAMPLE,
    TRAINING_JOBS,
    Placement,
    cluster_resolver,
    num_training_workers,
    tf_config,
)
from trainer.common.errors import UserInputError
from trainer.common.validate import FlagEnum

# Steps per host loop (one `tf.function` call) when `train.steps_per_loop` is left to the strategy: a TPU step
# takes milliseconds and every host round trip idles the chips, so TPUs run long loops.
TPU_STEPS_PER_LOOP = 500
HOST_STEPS_PER_LOOP = 50


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


def resolve_strategy_name(name: "str | StrategyName", placement: Placement | None = None) -> StrategyName:
    """Turns `auto` into the strategy it picks here; other names are returned as they are.

    `auto` picks tpu when --tpu is given, multi_worker_mirrored when TF_CONFIG or --worker_hosts name several
    training workers (and this task is one of them), mirrored with more than one GPU, else one_device.
    """
    name = StrategyName.parse(name)
    if name is not StrategyName.AUTO:
        return name
    placement = placement or Placement()
    if placement.tpu:
        return StrategyName.TPU
    config = tf_config()
    cluster = config.get("cluster") or {"worker": list(placement.worker_hosts)}
    if placement.cluster_from:
        cluster = cluster_resolver(placement).cluster_spec().as_dict()
    # An evaluator beside the cluster evaluates checkpoints on its own devices; it takes no training step.
    is_training_task = config.get("task", {}).get("type", "worker") in TRAINING_JOBS
    if is_training_task and num_training_workers(cluster) > 1:
        return StrategyName.MULTI_WORKER_MIRRORED
    # Physical, not logical: listing logical devices initialises the runtime, after which
    # MultiWorkerMirrored can no longer configure its collective ops.
    if len(tf.config.list_physical_devices("GPU")) > 1:
        return StrategyName.MIRRORED
    return StrategyName.ONE_DEVICE


def create_strategy(
    name: "str | StrategyName",
    placement: Placement | None = None,
    *,
    mirrored: MirroredConfig,
    multi_worker: MultiWorkerConfig,
) -> tf.distribute.Strategy:
    """Builds the strategy `name` for this placement.

    Args:
      name: a `StrategyName` or its value; `auto` as `resolve_strategy_name` says.
      placement: the TPU or cluster flags; none by default.
      mirrored: the Mirrored settings (used by the mirrored strategy).
      multi_worker: the MultiWorkerMirrored settings (used by multi_worker_mirrored); hand the same object to
        `lost_workers.lost_workers_reported`.

    Returns:
      The strategy. Mirrored without GPUs uses every logical CPU (see `--virtual_cpus`).

    Raises:
      UserInputError: for flags that do not fit the strategy, a malformed TF_CONFIG, or a TPU that is not there.
    """
    placement = placement or Placement()
    name = resolve_strategy_name(name, placement)
    _check_placement_applies(name, placement)
    num_gpus = len(tf.config.list_physical_devices("GPU"))
    if name is StrategyName.ONE_DEVICE:
        strategy = tf.distribute.OneDeviceStrategy("/gpu:0" if num_gpus else "/cpu:0")
    elif name is StrategyName.MIRRORED:
        devices = None if num_gpus else [d.name for d in tf.config.list_logical_devices("CPU")]
        # devices=None: every GPU.
        strategy = tf.distribute.MirroredStrategy(devices, cross_device_ops=mirrored.build(num_gpus))
    elif name is StrategyName.MULTI_WORKER_MIRRORED:
        strategy = _multi_worker_strategy(placement, multi_worker)
    else:
        strategy = _tpu_strategy(placement)
    logging.info(
        "Strategy %s (%s) with %d replicas.", name.value, type(strategy).__name__, strategy.num_replicas_in_sync
    )
    return strategy


def _check_placement_applies(name: StrategyName, placement: Placement) -> None:
    if placement.tpu and name is not StrategyName.TPU:
        raise UserInputError(f"--tpu={placement.tpu}: expected --strategy=tpu or auto with it, received {name.value}.")
    if placement.worker_hosts and name is not StrategyName.MULTI_WORKER_MIRRORED:
        raise UserInputError(
            f"--worker_hosts: expected --strategy=multi_worker_mirrored or auto with it, received {name.value}."
        )


def _multi_worker_strategy(
    placement: Placement, config: MultiWorkerConfig
) -> tf.distribute.MultiWorkerMirroredStrategy:
    resolver = cluster_resolver(placement)
    if resolver is None:
        raise UserInputError(
            "--strategy=multi_worker_mirrored: expected the cluster in the TF_CONFIG environment variable (e.g. "
            f"{TF_CONFIG_EXAMPLE}) or in --worker_hosts=host1:2222,host2:2222 --task_index=<0, 1, ...>, received "
            "neither."
        )
    cluster = resolver.cluster_spec().as_dict()
    me = f"/job:{resolver.task_type}/task:{resolver.task_id}"
    if resolver.task_type in TRAINING_JOBS:
        join.wait_for_peers(
            cluster, resolver.task_type, resolver.task_id, config.join_timeout_seconds, placement.cluster_source
        )
        _configure_coordination_service(cluster, config)
    try:
        return tf.distribute.MultiWorkerMirroredStrategy(
            cluster_resolver=resolver, communication_options=config.communication_options()
        )
    except tf.errors.UnknownError as error:
        if "Could not start gRPC server" not in str(error):
            raise
        address = cluster[resolver.task_type][resolver.task_id]
        raise join.port_in_use_error(
            placement.cluster_source, me, address, "TensorFlow: Could not start gRPC server"
        ) from None


def _configure_coordination_service(cluster: dict, config: MultiWorkerConfig) -> None:
    # What MultiWorkerMirroredStrategy would configure itself, plus the heartbeat timeout. It must precede the
    # strategy, which skips this step when a configuration is already there.
    leader_job = "chief" if "chief" in cluster else "worker"
    eager_context.context().configure_coordination_service(
        service_type="standalone",
        service_leader=f"/job:{leader_job}/replica:0/task:0",
        heartbeat_timeout_in_ms=config.heartbeat_timeout_seconds * 1000,
        # A backstop behind join.wait_for_peers: a task that vanishes between that check and registering.
        cluster_register_timeout_in_ms=int(config.join_timeout_seconds * 1000),
        # Only training tasks: an evaluator beside the cluster never joins, and must not be waited for.
        coordinated_jobs=[
            coordination_config_pb2.CoordinatedJob(name=job, num_tasks=len(cluster[job]))
            for job in TRAINING_JOBS
            if job in cluster
        ],
    )


def _tpu_strategy(placement: Placement) -> tf.distribute.TPUStrategy:
    tpu = placement.tpu
    if not tpu:
        raise UserInputError(
            "--strategy=tpu: expected --tpu too (a TPU name with --tpu_zone/--gcp_project, a grpc:// address, or "
            "'local' on a TPU VM), received none."
        )
    where = f"--tpu={tpu}" + "".join(
        f" {flag}={value}"
        for flag, value in (("--tpu_zone", placement.tpu_zone), ("--gcp_project", placement.gcp_project))
        if value
    )
    try:
        # A name is looked up through the Cloud TPU API (cloud-tpu-client); zone and project default to the
        # VM's own when unset.
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
            tpu=tpu, zone=placement.tpu_zone, project=placement.gcp_project
        )
        if tpu != "local":
            tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    # The resolver fails through many libraries (TensorFlow, google-auth, the Cloud API client, gRPC); each
    # failure means the same thing here and is reported, not swallowed.
    except Exception as error:
        first_line = (str(error).splitlines() or [""])[0] or type(error).__name__
        raise UserInputError(
            f"--strategy=tpu {where}: no TPU could be reached from this machine ({type(error).__name__}: "
            f"{first_line}). Expected a TPU: run on a TPU VM with --tpu=local, or name a TPU that exists with "
            "--tpu=<name> --tpu_zone=<zone> --gcp_project=<project> (`gcloud compute tpus tpu-vm list "
            "--zone=<zone>` lists them), or give its grpc://host:8470 address. Without a TPU, use "
            "--strategy=auto."
        ) from None
    return tf.distribute.TPUStrategy(resolver)


def strategy_name(strategy: tf.distribute.Strategy) -> StrategyName:
    """Returns the name of a built strategy."""
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return StrategyName.TPU
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return StrategyName.MULTI_WORKER_MIRRORED
    if isinstance(strategy, tf.distribute.MirroredStrategy):
        return StrategyName.MIRRORED
    return StrategyName.ONE_DEVICE


def _concrete_name(strategy: "str | StrategyName | tf.distribute.Strategy") -> StrategyName:
    if isinstance(strategy, tf.distribute.Strategy):
        return strategy_name(strategy)
    name = StrategyName.parse(strategy)
    if name is StrategyName.AUTO:
        raise ValueError("expected a resolved strategy name (see resolve_strategy_name), received 'auto'")
    return name


def default_steps_per_loop(strategy: "str | StrategyName | tf.distribute.Strategy") -> int:
    """Steps per host loop when `train.steps_per_loop` is not set: 500 on TPU, 50 elsewhere."""
    return TPU_STEPS_PER_LOOP if _concrete_name(strategy) is StrategyName.TPU else HOST_STEPS_PER_LOOP


def default_precision(strategy: "str | StrategyName | tf.distribute.Strategy") -> str:
    """The Keras mixed-precision policy when none is set: `mixed_bfloat16` on TPU (native there), else `float32`.

    GPUs gain from `mixed_float16` too, but it needs loss scaling and can diverge, so it is opt-in
    (configs/gpu_workstation.gin).
    """
    return "mixed_bfloat16" if _concrete_name(strategy) is StrategyName.TPU else "float32"
