"""Where a job runs: the TPU and cluster flags (`Placement`) and the cluster that TF_CONFIG describes.

The flags are `--tpu`, `--tpu_zone`, `--gcp_project`, `--worker_hosts` and `--task_index`; a scheduler sets the
TF_CONFIG environment variable instead of the last two.
"""

import dataclasses
import json
import os

import tensorflow as tf

from trainer.cluster import schedulers
from trainer.common import validate
from trainer.common.errors import UserInputError, expected

# Task types a MultiWorkerMirrored cluster may name; an evaluator is not a training worker.
TRAINING_JOBS = ("chief", "worker")
_CLUSTER_JOBS = (*TRAINING_JOBS, "evaluator")
TF_CONFIG_EXAMPLE = '{"cluster": {"worker": ["host1:2222", "host2:2222"]}, "task": {"type": "worker", "index": 0}}'


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where the job runs, as the command line says: the TPU to use, or this worker's place in a cluster.

    Attributes:
      tpu: `--tpu`: a Cloud TPU name, a `grpc://host:port` address, or `local` on a TPU VM.
      tpu_zone: `--tpu_zone`: the zone of the named TPU (a name only).
      gcp_project: `--gcp_project`: the project of the named TPU (a name only).
      worker_hosts: `--worker_hosts`: every worker's `host:port`, the same list on every worker.
      task_index: `--task_index`: this worker's index in `worker_hosts` (0 is the chief).
      cluster_from: `--cluster_from`: `kubernetes` (an Indexed Job: `worker_host_template`, `num_workers`) or
        `slurm` (SlurmClusterResolver, ports from `cluster_port`).
      worker_host_template: `--worker_host_template`: worker i's host:port with `{index}` for i.
      num_workers: `--num_workers`: the number of workers (the Indexed Job's completions).
      cluster_port: `--cluster_port`: under Slurm, the port of the first task on each node (the next get +1, …).
    """

    tpu: str | None = None
    tpu_zone: str | None = None
    gcp_project: str | None = None
    worker_hosts: tuple[str, ...] = ()
    task_index: int | None = None
    cluster_from: str | None = None
    worker_host_template: str | None = None
    num_workers: int | None = None
    cluster_port: int = 2222

    def __post_init__(self):
        object.__setattr__(self, "worker_hosts", tuple(h.strip() for h in self.worker_hosts if h.strip()))
        self._check_tpu_flags()
        if self.tpu and self.worker_hosts:
            raise UserInputError(
                "--tpu and --worker_hosts: expected one of them, received both. A TPU job is one process per TPU "
                "host, found through --tpu; --worker_hosts describes a MultiWorkerMirrored cluster."
            )
        self._check_worker_flags()
        self._check_scheduler_flags()

    @property
    def cluster_source(self) -> str:
        """What describes the cluster, as the errors name it."""
        if self.cluster_from:
            return f"--cluster_from={self.cluster_from}"
        return "--worker_hosts" if self.worker_hosts else "TF_CONFIG"

    def _check_scheduler_flags(self) -> None:
        if self.cluster_from is None:
            for flag, value in (
                ("--worker_host_template", self.worker_host_template),
                ("--num_workers", self.num_workers),
            ):
                if value is not None:
                    raise UserInputError(f"{flag}: expected only with --cluster_from=kubernetes, received it alone.")
            return
        validate.choice("--cluster_from", self.cluster_from, schedulers.CLUSTER_SOURCES)
        if self.worker_hosts or self.tpu:
            raise UserInputError(
                f"--cluster_from={self.cluster_from}: expected no --worker_hosts or --tpu with it (it describes the "
                "cluster itself), received one."
            )
        if self.cluster_from == schedulers.KUBERNETES:
            template = self.worker_host_template or ""
            if schedulers.INDEX_FIELD not in template:
                raise expected(
                    "--worker_host_template", "host:port with {index}, e.g. deeplab-{index}.deeplab:2222", template
                )
            validate.host_port("--worker_host_template", template.replace(schedulers.INDEX_FIELD, "0"))
            validate.positive_int("--num_workers", self.num_workers)
        validate.positive_int("--cluster_port", self.cluster_port)

    def _check_tpu_flags(self) -> None:
        for flag, value in (("--tpu_zone", self.tpu_zone), ("--gcp_project", self.gcp_project)):
            if value and not self.tpu:
                raise UserInputError(
                    f"{flag}={value}: expected --tpu=<TPU name> too (it locates a TPU by name), received none."
                )
            if value and (self.tpu == "local" or self.tpu.startswith("grpc://")):
                raise UserInputError(
                    f"{flag}={value}: expected only with a TPU name, received --tpu={self.tpu}, which needs no "
                    f"zone or project; drop {flag}."
                )

    def _check_worker_flags(self) -> None:
        hosts = ",".join(self.worker_hosts)
        if self.worker_hosts and self.task_index is None:
            raise UserInputError(
                f"--worker_hosts={hosts}: expected --task_index too (this worker's index in the list, 0 on the "
                "chief), received none."
            )
        if self.task_index is not None and not self.worker_hosts:
            raise UserInputError(
                f"--task_index={self.task_index}: expected --worker_hosts too (every worker's host:port, "
                "comma-separated), received none."
            )
        for host in self.worker_hosts:
            validate.host_port("--worker_hosts", host)
        if len(set(self.worker_hosts)) != len(self.worker_hosts):
            raise UserInputError(
                f"--worker_hosts={hosts}: expected distinct host:port addresses, received a duplicate."
            )
        if self.worker_hosts and not 0 <= self.task_index < len(self.worker_hosts):
            raise UserInputError(
                f"--task_index: expected an index into the {len(self.worker_hosts)} --worker_hosts "
                f"(0 to {len(self.worker_hosts) - 1}), received {self.task_index}."
            )


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
            f"TF_CONFIG: expected JSON such as {TF_CONFIG_EXAMPLE}, received {raw!r} ({error})."
        ) from None
    if not isinstance(config, dict) or not isinstance(config.get("cluster"), dict) or "task" not in config:
        raise UserInputError(
            f"TF_CONFIG: expected a JSON object with 'cluster' and 'task' keys, received {raw!r}. "
            f"Example: {TF_CONFIG_EXAMPLE}."
        )
    _check_cluster(config["cluster"])
    _check_task(config["task"], config["cluster"])
    return config


def _check_cluster(cluster: dict) -> None:
    for job, hosts in cluster.items():
        if job not in _CLUSTER_JOBS:
            raise UserInputError(
                f"TF_CONFIG: expected cluster jobs among {{{', '.join(_CLUSTER_JOBS)}}}, received {job!r} "
                "(parameter servers are not supported: this trainer is synchronous data-parallel)."
            )
        if not isinstance(hosts, list) or not hosts:
            raise expected(f"TF_CONFIG cluster.{job}", "a list of host:port", hosts)
        for host in hosts:
            validate.host_port(f"TF_CONFIG cluster.{job}", host)
    if len(cluster.get("chief", [])) > 1:
        raise UserInputError(f"TF_CONFIG: expected at most one chief, received {cluster['chief']!r}.")


def _check_task(task: object, cluster: dict) -> None:
    if not isinstance(task, dict) or task.get("type") not in cluster:
        raise UserInputError(
            f"TF_CONFIG: expected task.type to name a job of the cluster ({', '.join(cluster)}), received "
            f"{task.get('type') if isinstance(task, dict) else task!r}."
        )
    index, num_tasks = task.get("index", 0), len(cluster[task["type"]])
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < num_tasks:
        raise UserInputError(
            f"TF_CONFIG: expected task.index in [0, {num_tasks}) for job {task['type']!r}, received {index!r}."
        )


def num_training_workers(cluster: dict) -> int:
    """The number of tasks of `cluster` (a cluster spec as a dict) that take training steps."""
    return sum(len(cluster.get(job, [])) for job in TRAINING_JOBS)


def cluster_resolver(placement: Placement) -> tf.distribute.cluster_resolver.ClusterResolver | None:
    """Returns this worker's cluster resolver: from --cluster_from, TF_CONFIG or --worker_hosts; None for none.

    Raises:
      UserInputError: if both are given, or TF_CONFIG is malformed.
    """
    config = tf_config()
    if config and placement.cluster_from:
        raise UserInputError(
            f"TF_CONFIG and --cluster_from={placement.cluster_from}: expected one description of the cluster, "
            "received both. Unset TF_CONFIG or drop --cluster_from."
        )
    if placement.cluster_from == schedulers.KUBERNETES:
        return schedulers.kubernetes_resolver(placement.worker_host_template, placement.num_workers)
    if placement.cluster_from == schedulers.SLURM:
        return schedulers.slurm_resolver(placement.cluster_port)
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
