"""The cluster and directories as schedulers describe them: Kubernetes Indexed Jobs, Slurm, Vertex AI.

Kubernetes: an Indexed Job sets `JOB_COMPLETION_INDEX` in each pod; with a headless Service every pod is
reachable as `<job>-<index>.<service>`, so `--worker_host_template` plus `--num_workers` give every address.
Slurm: TensorFlow's `SlurmClusterResolver` reads `SLURM_PROCID`, `SLURM_STEP_NUM_TASKS`, `SLURM_STEP_NODELIST`
and `SLURM_STEP_TASKS_PER_NODE` (one task per node or per GPU). Vertex AI sets TF_CONFIG itself and names the
output directories in `AIP_*` variables.
"""

import os
import shutil

import tensorflow as tf
from absl import logging

from trainer.common.errors import UserInputError

KUBERNETES = "kubernetes"
SLURM = "slurm"
CLUSTER_SOURCES = (KUBERNETES, SLURM)
INDEX_FIELD = "{index}"
# More than any node runs tasks: see slurm_resolver.
_CPU_NODE_PLACEHOLDER_GPUS = 1024


def _gpu_count() -> dict[str, int]:
    # Physical, not logical: listing logical devices would initialise the runtime before the strategy.
    return {"GPU": len(tf.config.list_physical_devices("GPU"))}


def kubernetes_resolver(host_template: str, num_workers: int) -> tf.distribute.cluster_resolver.ClusterResolver:
    """The cluster of an Indexed Job: worker i at `host_template` with `{index}` = i; this pod's index from env.

    Raises:
      UserInputError: `JOB_COMPLETION_INDEX` is unset or not an index into the `num_workers` workers.
    """
    raw = os.environ.get("JOB_COMPLETION_INDEX", "")
    if not raw.isdigit() or int(raw) >= num_workers:
        raise UserInputError(
            f"--cluster_from=kubernetes: expected JOB_COMPLETION_INDEX in 0-{num_workers - 1} (set by an Indexed "
            f"Job, completionMode: Indexed, with --num_workers={num_workers} = its completions), received "
            f"{raw or 'none'}."
        )
    hosts = [host_template.replace(INDEX_FIELD, str(index)) for index in range(num_workers)]
    return tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec({"worker": hosts}), task_type="worker", task_id=int(raw), num_accelerators=_gpu_count()
    )


def slurm_resolver(port_base: int) -> tf.distribute.cluster_resolver.ClusterResolver:
    """TensorFlow's SlurmClusterResolver: worker ranks from SLURM_PROCID, ports `port_base` + local task index.

    Raises:
      UserInputError: not inside a Slurm job step (a SLURM_* variable is missing or malformed).
    """
    has_gpus = "CUDA_VISIBLE_DEVICES" in os.environ or shutil.which("nvidia-smi") is not None
    # The resolver hands out GPUs to tasks and cannot place tasks on a node with none (it steps through GPU ids
    # to assign ports), so on CPU nodes it is given placeholder GPUs that it must not set, and the strategy is
    # handed its cluster with the true GPU count (zero).
    gpu_options = {} if has_gpus else {"gpus_per_node": _CPU_NODE_PLACEHOLDER_GPUS, "gpus_per_task": 1}
    try:
        resolver = tf.distribute.cluster_resolver.SlurmClusterResolver(
            port_base=port_base, auto_set_gpu=has_gpus, **gpu_options
        )
        cluster = resolver.cluster_spec()  # sets task_type/task_id (and CUDA_VISIBLE_DEVICES, one task per GPU)
    except (RuntimeError, ValueError) as error:
        raise UserInputError(
            f"--cluster_from=slurm: expected to run as a task of a Slurm job step (srun inside sbatch, which sets "
            f"SLURM_PROCID, SLURM_STEP_NUM_TASKS, SLURM_STEP_NODELIST, SLURM_STEP_TASKS_PER_NODE), received: {error}"
        ) from None
    if has_gpus:
        return resolver
    return tf.distribute.cluster_resolver.SimpleClusterResolver(
        cluster, task_type=resolver.task_type, task_id=resolver.task_id, num_accelerators=_gpu_count()
    )


def vertex_model_dir() -> str | None:
    """The model_dir of a Vertex AI custom job, from its `AIP_*` variables (None outside Vertex AI).

    Vertex gives `AIP_CHECKPOINT_DIR` = <base output>/checkpoints: the model_dir is its parent, so checkpoints
    land exactly there. Summaries go to `AIP_TENSORBOARD_LOG_DIR` (`vertex_summary_dir`).
    """
    checkpoint_dir = os.environ.get("AIP_CHECKPOINT_DIR", "").rstrip("/")
    if not checkpoint_dir:
        model_dir = os.environ.get("AIP_MODEL_DIR", "").rstrip("/")
        return model_dir or None
    parent, name = checkpoint_dir.rsplit("/", 1) if "/" in checkpoint_dir else ("", checkpoint_dir)
    model_dir = parent if name == "checkpoints" and parent else checkpoint_dir
    logging.info(
        "--model_dir unset: using %s from AIP_CHECKPOINT_DIR=%s (Vertex AI); AIP_MODEL_DIR=%s.",
        model_dir,
        checkpoint_dir,
        os.environ.get("AIP_MODEL_DIR", "(unset)"),
    )
    return model_dir


def vertex_summary_dir() -> str | None:
    """Where TensorBoard summaries go under Vertex AI (`AIP_TENSORBOARD_LOG_DIR`), or None."""
    summary_dir = os.environ.get("AIP_TENSORBOARD_LOG_DIR", "").rstrip("/") or None
    if summary_dir:
        logging.info("Summaries in %s (AIP_TENSORBOARD_LOG_DIR, Vertex AI).", summary_dir)
    return summary_dir


def report_hypertune_metric(report: dict, metric: str) -> None:
    """Reports `report[metric]` to Vertex AI hyperparameter tuning (the `cloudml-hypertune` extra)."""
    try:
        import hypertune  # the optional `vertex` extra
    except ImportError:
        raise UserInputError(
            f"--hypertune_metric={metric}: expected the cloudml-hypertune package (pip install "
            "'deeplab-trainer[vertex]'), received an environment without it."
        ) from None
    if metric not in report:
        raise UserInputError(
            f"--hypertune_metric={metric}: expected one of the evaluation report's metrics "
            f"({', '.join(sorted(k for k, v in report.items() if isinstance(v, float)))}), received {metric!r}."
        )
    hypertune.HyperTune().report_hyperparameter_tuning_metric(
        hyperparameter_metric_tag=metric, metric_value=float(report[metric]), global_step=int(report["step"])
    )
    logging.info(
        "Reported %s=%.4f at step %d to Vertex AI hyperparameter tuning.", metric, report[metric], report["step"]
    )


def hyperparameter_flags_to_gin(argv: list[str]) -> list[str]:
    """Turns `--<configurable>.<field>=<value>` arguments (how Vertex AI passes trial values) into gin bindings.

    No absl flag has a dot in its name, so `--optimizer.learning_rate=0.01` can only mean the gin binding
    `optimizer.learning_rate=0.01`; other arguments are returned as they are.
    """
    converted = []
    for arg in argv:
        name, equals, value = arg.partition("=")
        if name.startswith("--") and "." in name and equals:
            converted.append(f"--gin_bindings={name[2:]}={value}")
        else:
            converted.append(arg)
    return converted
