"""The tf.distribute strategy factory and the facts about this task that the rest of the trainer needs.

Where a job runs comes from flags (`--strategy`, `--tpu`, `--tpu_zone`, `--gcp_project`, `--worker_hosts`,
`--task_index`), gathered in a `Placement`; how its replicas communicate is gin (`mirrored.*`, `multi_worker.*`).
"""

import contextlib
import dataclasses
import json
import os
import re
from collections.abc import Iterator

import gin
import tensorflow as tf
from absl import logging

# Private, and the only way (what MultiWorkerMirroredStrategy itself uses): no public API sets the coordination
# service's heartbeat timeout, which is what turns a dead worker into an error on the others instead of a hang.
from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
from tensorflow.python.eager import context as eager_context

from trainer.common.errors import UserInputError
from trainer.core.config import FlagEnum

# Steps per host loop (one `tf.function` call) when `train.steps_per_loop` is left to the strategy: a TPU step
# takes milliseconds and every host round trip idles the chips, so TPUs run long loops.
TPU_STEPS_PER_LOOP = 500
HOST_STEPS_PER_LOOP = 50

_CROSS_DEVICE_OPS = ("auto", "nccl", "hierarchical_copy", "reduce_to_one")
_COMMUNICATION_IMPLEMENTATIONS = ("auto", "ring", "nccl")
# Task types a MultiWorkerMirrored cluster may name; an evaluator is not a training worker.
_TRAINING_JOBS = ("chief", "worker")
_CLUSTER_JOBS = (*_TRAINING_JOBS, "evaluator")
_TF_CONFIG_EXAMPLE = '{"cluster": {"worker": ["host1:2222", "host2:2222"]}, "task": {"type": "worker", "index": 0}}'


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


class WorkerLostError(RuntimeError):
    """A peer of a multi-worker job stopped (crashed, killed, preempted), so this worker cannot go on."""


def _check_choice(binding: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UserInputError(
            f"gin binding {binding}: expected one of {{{', '.join(choices)}}}, received {value!r} "
            f"(of type {type(value).__name__})."
        )


@gin.configurable("mirrored")
@dataclasses.dataclass(frozen=True)
class MirroredConfig:
    """How MirroredStrategy sums gradients across local devices; bound in gin as `mirrored.<field>`.

    Attributes:
      cross_device_ops: `auto` (TensorFlow's choice: NCCL when every device is a GPU), `nccl` (NCCL all-reduce;
        GPUs only), `hierarchical_copy` (reduce within groups of GPUs, then across; made for DGX-1-like
        topologies without full NVLink), `reduce_to_one` (copy everything to one device and broadcast back;
        the slowest, works everywhere).
    """

    cross_device_ops: str = "auto"

    def __post_init__(self):
        _check_choice("mirrored.cross_device_ops", self.cross_device_ops, _CROSS_DEVICE_OPS)

    def build(self, num_gpus: int) -> tf.distribute.CrossDeviceOps | None:
        """Returns the CrossDeviceOps to hand MirroredStrategy (None lets TensorFlow choose)."""
        if self.cross_device_ops == "nccl" and not num_gpus:
            raise UserInputError(
                "gin binding mirrored.cross_device_ops: expected a value that works without GPUs on this machine "
                "(it has none), received 'nccl' (NCCL runs on GPUs only). Use 'reduce_to_one' or "
                "'hierarchical_copy', or leave it at 'auto'."
            )
        if self.cross_device_ops == "nccl":
            return tf.distribute.NcclAllReduce()
        if self.cross_device_ops == "hierarchical_copy":
            return tf.distribute.HierarchicalCopyAllReduce()
        if self.cross_device_ops == "reduce_to_one":
            return tf.distribute.ReductionToOneDevice()
        return None


@gin.configurable("multi_worker")
@dataclasses.dataclass(frozen=True)
class MultiWorkerConfig:
    """How MultiWorkerMirroredStrategy communicates and notices a lost worker; gin `multi_worker.<field>`.

    Attributes:
      implementation: collective implementation: `auto`, `ring` (gRPC, CPU or GPU) or `nccl` (GPUs).
      timeout_seconds: fail a collective op (e.g. the gradient all-reduce) that has not completed after this
        long; None waits for ever. Set it well above the slowest step, first compilation included.
      heartbeat_timeout_seconds: a worker that has sent the coordination service no heartbeat for this long is
        declared lost and every other worker's collectives are aborted with an error naming it (TensorFlow's
        default is 10).
    """

    implementation: str = "auto"
    timeout_seconds: float | None = None
    heartbeat_timeout_seconds: int = 10

    def __post_init__(self):
        _check_choice("multi_worker.implementation", self.implementation, _COMMUNICATION_IMPLEMENTATIONS)
        if self.timeout_seconds is not None and (
            isinstance(self.timeout_seconds, bool)
            or not isinstance(self.timeout_seconds, int | float)
            or self.timeout_seconds <= 0
        ):
            raise UserInputError(
                "gin binding multi_worker.timeout_seconds: expected None or a positive number of seconds, received "
                f"{self.timeout_seconds!r} (of type {type(self.timeout_seconds).__name__})."
            )
        heartbeat = self.heartbeat_timeout_seconds
        if isinstance(heartbeat, bool) or not isinstance(heartbeat, int) or heartbeat <= 0:
            raise UserInputError(
                "gin binding multi_worker.heartbeat_timeout_seconds: expected a positive integer, received "
                f"{heartbeat!r} (of type {type(heartbeat).__name__})."
            )

    def communication_options(self) -> tf.distribute.experimental.CommunicationOptions:
        """Returns the CommunicationOptions for the strategy's collectives."""
        return tf.distribute.experimental.CommunicationOptions(
            implementation=self.implementation.upper(), timeout_seconds=self.timeout_seconds
        )


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where the job runs, as the command line says: the TPU to use, or this worker's place in a cluster.

    Attributes:
      tpu: `--tpu`: a Cloud TPU name, a `grpc://host:port` address, or `local` on a TPU VM.
      tpu_zone: `--tpu_zone`: the zone of the named TPU (a name only).
      gcp_project: `--gcp_project`: the project of the named TPU (a name only).
      worker_hosts: `--worker_hosts`: every worker's `host:port`, the same list on every worker.
      task_index: `--task_index`: this worker's index in `worker_hosts` (0 is the chief).
    """

    tpu: str | None = None
    tpu_zone: str | None = None
    gcp_project: str | None = None
    worker_hosts: tuple[str, ...] = ()
    task_index: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "worker_hosts", tuple(h.strip() for h in self.worker_hosts if h.strip()))
        for flag, value in (("--tpu_zone", self.tpu_zone), ("--gcp_project", self.gcp_project)):
            if value and not self.tpu:
                raise UserInputError(f"{flag}={value}: it locates a TPU by name, so it needs --tpu=<TPU name> too.")
            if value and (self.tpu == "local" or self.tpu.startswith("grpc://")):
                raise UserInputError(
                    f"{flag}={value}: expected only with a TPU name, received --tpu={self.tpu}, which needs no "
                    f"zone or project; drop {flag}."
                )
        if self.tpu and self.worker_hosts:
            raise UserInputError(
                "--tpu and --worker_hosts: expected one of them, received both. A TPU job is one process per TPU "
                "host, found through --tpu; --worker_hosts describes a MultiWorkerMirrored cluster."
            )
        if self.worker_hosts and self.task_index is None:
            raise UserInputError(
                f"--worker_hosts={','.join(self.worker_hosts)}: expected --task_index too (this worker's index "
                "in the list, 0 on the chief), received none."
            )
        if self.task_index is not None and not self.worker_hosts:
            raise UserInputError(
                f"--task_index={self.task_index}: expected --worker_hosts too (every worker's host:port, "
                "comma-separated), received none."
            )
        for host in self.worker_hosts:
            _check_address("--worker_hosts", host)
        if len(set(self.worker_hosts)) != len(self.worker_hosts):
            raise UserInputError(
                f"--worker_hosts={','.join(self.worker_hosts)}: expected distinct host:port addresses, received a "
                "duplicate."
            )
        if self.worker_hosts and not 0 <= self.task_index < len(self.worker_hosts):
            raise UserInputError(
                f"--task_index: expected an index into the {len(self.worker_hosts)} --worker_hosts "
                f"(0 to {len(self.worker_hosts) - 1}), received {self.task_index}."
            )


def _check_address(where: str, address: object) -> None:
    host, _, port = address.rpartition(":") if isinstance(address, str) else ("", "", "")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserInputError(f"{where}: expected host:port addresses such as 10.0.0.2:2222, received {address!r}.")


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
        raise UserInputError(
            f"--virtual_cpus={count}: TensorFlow was already initialised, so the CPU can no longer be split ({error})."
        ) from None


def tf_config() -> dict:
    """Returns the parsed and checked TF_CONFIG environment variable, or {} when it is unset.

    Raises:
      UserInputError: on malformed JSON, unknown task types, addresses without a port, or a task not in the cluster.
    """
    raw = os.environ.get("TF_CONFIG", "")
    if not raw.strip():
        return {}
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as error:
        raise UserInputError(
            f"TF_CONFIG: expected JSON such as {_TF_CONFIG_EXAMPLE}, received {raw!r} ({error})."
        ) from None
    if not isinstance(config, dict) or not isinstance(config.get("cluster"), dict) or "task" not in config:
        raise UserInputError(
            f"TF_CONFIG: expected a JSON object with 'cluster' and 'task' keys, received {raw!r}. "
            f"Example: {_TF_CONFIG_EXAMPLE}."
        )
    cluster, task = config["cluster"], config["task"]
    for job, hosts in cluster.items():
        if job not in _CLUSTER_JOBS:
            raise UserInputError(
                f"TF_CONFIG: expected cluster jobs among {{{', '.join(_CLUSTER_JOBS)}}}, received {job!r} "
                "(parameter servers are not supported: this trainer is synchronous data-parallel)."
            )
        if not isinstance(hosts, list) or not hosts:
            raise UserInputError(f"TF_CONFIG: expected cluster.{job} to be a list of host:port, received {hosts!r}.")
        for host in hosts:
            _check_address(f"TF_CONFIG cluster.{job}", host)
    if len(cluster.get("chief", [])) > 1:
        raise UserInputError(f"TF_CONFIG: expected at most one chief, received {cluster['chief']!r}.")
    if not isinstance(task, dict) or task.get("type") not in cluster:
        raise UserInputError(
            f"TF_CONFIG: expected task.type to name a job of the cluster ({', '.join(cluster)}), received "
            f"{task.get('type') if isinstance(task, dict) else task!r}."
        )
    index = task.get("index", 0)
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(cluster[task["type"]]):
        raise UserInputError(
            f"TF_CONFIG: expected task.index in [0, {len(cluster[task['type']])}) for job {task['type']!r}, "
            f"received {index!r}."
        )
    return config


def _num_training_workers(cluster: dict) -> int:
    return sum(len(cluster.get(job, [])) for job in _TRAINING_JOBS)


def cluster_resolver(placement: Placement) -> tf.distribute.cluster_resolver.ClusterResolver | None:
    """Returns this worker's cluster resolver: from TF_CONFIG, else from --worker_hosts; None for neither.

    Raises:
      UserInputError: if both are given, or TF_CONFIG is malformed.
    """
    config = tf_config()
    if config and placement.worker_hosts:
        raise UserInputError(
            "TF_CONFIG and --worker_hosts: expected one description of the cluster, received both. Unset TF_CONFIG "
            "or drop --worker_hosts/--task_index."
        )
    if config:
        return tf.distribute.cluster_resolver.TFConfigClusterResolver()
    if placement.worker_hosts:
        # What TFConfigClusterResolver builds from {"cluster": {"worker": hosts}, "task": {"type": "worker",
        # "index": task_index}}; the GPU count is given since only TFConfigClusterResolver is asked the runtime.
        return tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec({"worker": list(placement.worker_hosts)}),
            task_type="worker",
            task_id=placement.task_index,
            num_accelerators={"GPU": len(tf.config.list_physical_devices("GPU"))},
        )
    return None


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
    # An evaluator beside the cluster evaluates checkpoints on its own devices; it takes no training step.
    is_training_task = config.get("task", {}).get("type", "worker") in _TRAINING_JOBS
    if is_training_task and _num_training_workers(cluster) > 1:
        return StrategyName.MULTI_WORKER_MIRRORED
    # Physical, not logical: listing logical devices initialises the runtime, after which
    # MultiWorkerMirrored can no longer configure its collective ops.
    if len(tf.config.list_physical_devices("GPU")) > 1:
        return StrategyName.MIRRORED
    return StrategyName.ONE_DEVICE


def _check_placement_applies(name: StrategyName, placement: Placement) -> None:
    if placement.tpu and name is not StrategyName.TPU:
        raise UserInputError(f"--tpu={placement.tpu}: expected --strategy=tpu or auto with it, received {name.value}.")
    if placement.worker_hosts and name is not StrategyName.MULTI_WORKER_MIRRORED:
        raise UserInputError(
            f"--worker_hosts: expected --strategy=multi_worker_mirrored or auto with it, received {name.value}."
        )


def _coordination_leader(cluster: dict) -> str:
    job = "chief" if "chief" in cluster else "worker"
    return f"/job:{job}/replica:0/task:0"


def _multi_worker_strategy(
    placement: Placement, config: MultiWorkerConfig
) -> tf.distribute.MultiWorkerMirroredStrategy:
    resolver = cluster_resolver(placement)
    if resolver is None:
        raise UserInputError(
            "--strategy=multi_worker_mirrored: expected the cluster in the TF_CONFIG environment variable (e.g. "
            f"{_TF_CONFIG_EXAMPLE}) or in --worker_hosts=host1:2222,host2:2222 --task_index=<0, 1, ...>, received "
            "neither."
        )
    cluster = resolver.cluster_spec().as_dict()
    if resolver.task_type in _TRAINING_JOBS:
        # What MultiWorkerMirroredStrategy would configure itself, plus the heartbeat timeout. It must precede
        # the strategy, which skips this step when a configuration is already there.
        eager_context.context().configure_coordination_service(
            service_type="standalone",
            service_leader=_coordination_leader(cluster),
            heartbeat_timeout_in_ms=config.heartbeat_timeout_seconds * 1000,
            # Only training tasks: an evaluator beside the cluster never joins, and must not be waited for.
            coordinated_jobs=[
                coordination_config_pb2.CoordinatedJob(name=job, num_tasks=len(cluster[job]))
                for job in _TRAINING_JOBS
                if job in cluster
            ],
        )
    try:
        return tf.distribute.MultiWorkerMirroredStrategy(
            cluster_resolver=resolver, communication_options=config.communication_options()
        )
    except tf.errors.UnknownError as error:
        if "Could not start gRPC server" not in str(error):
            raise
        address = cluster[resolver.task_type][resolver.task_id]
        source = "--worker_hosts" if placement.worker_hosts else "TF_CONFIG"
        raise UserInputError(
            f"{source}: this worker (/job:{resolver.task_type}/task:{resolver.task_id}) could not listen on the port "
            f"of its address {address} (TensorFlow: Could not start gRPC server). Expected a free port: another "
            "process on this machine holds it (an earlier run still alive?). Stop that process or give this worker "
            "another port, in every worker's copy of the cluster description."
        ) from None


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


def create_strategy(
    name: "str | StrategyName",
    placement: Placement | None = None,
    mirrored: MirroredConfig | None = None,
    multi_worker: MultiWorkerConfig | None = None,
) -> tf.distribute.Strategy:
    """Builds the strategy `name` for this placement.

    Args:
      name: a `StrategyName` or its value; `auto` as `resolve_strategy_name` says.
      placement: the TPU or cluster flags; none by default.
      mirrored: Mirrored settings; the gin-bound `mirrored.*` by default.
      multi_worker: MultiWorkerMirrored settings; the gin-bound `multi_worker.*` by default.

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
        cross_device_ops = (mirrored or MirroredConfig()).build(num_gpus)
        devices = None if num_gpus else [d.name for d in tf.config.list_logical_devices("CPU")]
        strategy = tf.distribute.MirroredStrategy(devices, cross_device_ops=cross_device_ops)  # None: every GPU
    elif name is StrategyName.MULTI_WORKER_MIRRORED:
        strategy = _multi_worker_strategy(placement, multi_worker or MultiWorkerConfig())
    else:
        strategy = _tpu_strategy(placement)
    logging.info(
        "Strategy %s (%s) with %d replicas.",
        name.value,
        type(strategy).__name__,
        strategy.num_replicas_in_sync,
    )
    return strategy


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


# "/job:worker/replica:0/task:1" or "/job:worker/task:1", as TensorFlow's errors name tasks.
_TASK_PATTERN = re.compile(r"/job:(\w+)(?:/replica:\d+)?/task:(\d+)")


def describe_lost_worker(error: tf.errors.OpError, strategy: tf.distribute.Strategy) -> str:
    """Explains a collective failure of a multi-worker job: which worker was lost, how we know, what to do."""
    message = str(error)
    resolver = strategy.cluster_resolver
    cluster = resolver.cluster_spec().as_dict()
    me = (resolver.task_type, resolver.task_id)
    config = MultiWorkerConfig()
    # The coordination service lists the tasks whose heartbeats stopped after "unhealthy"; a broken gRPC
    # connection names its "remote target".
    _, heartbeat_lost, unhealthy = message.partition("unhealthy")
    named = [(job, int(task)) for job, task in _TASK_PATTERN.findall(unhealthy or message)]
    lost = list(dict.fromkeys(task for task in named if task != me))
    job_size = f"{_num_training_workers(cluster)}-worker MultiWorkerMirrored job"
    if lost:
        names = ", ".join(
            f"/job:{job}/task:{task} ({cluster[job][task]})"
            if job in cluster and task < len(cluster[job])
            else f"/job:{job}/task:{task}"
            for job, task in lost
        )
        if heartbeat_lost:
            how = (
                f"it sent no heartbeat for multi_worker.heartbeat_timeout_seconds={config.heartbeat_timeout_seconds} s"
            )
        else:
            how = f"the connection to it failed ({type(error).__name__})"
        what = f"Lost {names} of the {job_size}: {how}. It crashed, was killed or preempted: its own log says why."
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


@contextlib.contextmanager
def lost_workers_reported(strategy: tf.distribute.Strategy) -> Iterator[None]:
    """Turns the collective errors that a lost peer causes under MultiWorkerMirrored into a `WorkerLostError`."""
    try:
        yield
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError) as error:
        if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            raise
        raise WorkerLostError(describe_lost_worker(error, strategy)) from error
