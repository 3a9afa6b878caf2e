"""Command line: absl flags say where and how the job runs; gin says what it trains. No logic here."""

import sys

from absl import app, flags, logging

from trainer import train_lib
from trainer.cluster import schedulers
from trainer.cluster.communication import MirroredConfig, MultiWorkerConfig
from trainer.cluster.join import JoinTimeoutError
from trainer.cluster.lost_workers import WorkerLostError, lost_workers_reported
from trainer.cluster.placement import Placement
from trainer.cluster.preemption import Preempted
from trainer.cluster.strategies import StrategyName, create_strategy
from trainer.cluster.virtual_cpus import configure_virtual_cpus
from trainer.common.errors import UserInputError
from trainer.core.config import Mode, parse_gin
from trainer.storage.checkpoints import CheckpointWriteError

_GIN_FILE = flags.DEFINE_multi_string("gin_file", [], "Gin config file(s), parsed in order.")
_GIN_BINDINGS = flags.DEFINE_multi_string(
    "gin_bindings", [], "Gin bindings applied after the files, e.g. 'train.steps=2000'."
)
flags.DEFINE_alias("gin_param", "gin_bindings")
_MODEL_DIR = flags.DEFINE_string(
    "model_dir",
    None,
    "Directory for checkpoints, summaries and results (required, except under Vertex AI, where AIP_CHECKPOINT_DIR "
    "gives it).",
)
_MODE = flags.DEFINE_enum("mode", Mode.TRAIN_AND_EVAL.value, [m.value for m in Mode], "What to run.")
_STRATEGY = flags.DEFINE_enum(
    "strategy",
    StrategyName.AUTO.value,
    [s.value for s in StrategyName],
    "tf.distribute strategy.",
)
_TPU = flags.DEFINE_string("tpu", None, "TPU name, grpc:// address, or 'local' on a TPU VM.")
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint",
    None,
    "--mode=eval only: the checkpoint to evaluate, a prefix (model_dir/checkpoints/ckpt-500) or a directory "
    "(its latest, e.g. model_dir/best); default the latest in --model_dir.",
)
_PROFILE_STEPS = flags.DEFINE_string(
    "profile_steps",
    None,
    "START,END: capture a TensorBoard profiler trace of these global steps into model_dir/train (rounded out to "
    "whole host loops of train.steps_per_loop steps; view with tensorboard-plugin-profile).",
)
_TPU_ZONE = flags.DEFINE_string("tpu_zone", None, "Zone of the TPU named by --tpu (defaults to this VM's).")
_GCP_PROJECT = flags.DEFINE_string("gcp_project", None, "Project of the TPU named by --tpu (defaults to this VM's).")
_WORKER_HOSTS = flags.DEFINE_list(
    "worker_hosts", [], "Every worker's host:port, comma-separated, when TF_CONFIG is not set (multi-worker)."
)
_TASK_INDEX = flags.DEFINE_integer("task_index", None, "This worker's index in --worker_hosts (0 is the chief).")
_CLUSTER_FROM = flags.DEFINE_enum(
    "cluster_from",
    None,
    list(schedulers.CLUSTER_SOURCES),
    "Build the multi-worker cluster from the scheduler: kubernetes (an Indexed Job: JOB_COMPLETION_INDEX with "
    "--worker_host_template and --num_workers) or slurm (SlurmClusterResolver reading SLURM_*).",
)
_WORKER_HOST_TEMPLATE = flags.DEFINE_string(
    "worker_host_template", None, "--cluster_from=kubernetes: worker i's host:port, {index} standing for i."
)
_NUM_WORKERS = flags.DEFINE_integer("num_workers", None, "--cluster_from=kubernetes: how many workers.")
_CLUSTER_PORT = flags.DEFINE_integer("cluster_port", 2222, "--cluster_from=slurm: the first task's port on a node.")
_HYPERTUNE_METRIC = flags.DEFINE_string(
    "hypertune_metric",
    None,
    "Report this metric of the final evaluation (e.g. miou) to Vertex AI hyperparameter tuning (cloudml-hypertune).",
)
_VIRTUAL_CPUS = flags.DEFINE_integer(
    "virtual_cpus",
    0,
    "Split the CPU into this many logical devices (to try --strategy=mirrored without GPUs).",
)


def _main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected positional arguments: {argv[1:]}. Settings go in --gin_bindings.")
    try:
        configure_virtual_cpus(_VIRTUAL_CPUS.value)
        parse_gin(_GIN_FILE.value, _GIN_BINDINGS.value)
        placement = Placement(
            tpu=_TPU.value,
            tpu_zone=_TPU_ZONE.value,
            gcp_project=_GCP_PROJECT.value,
            worker_hosts=tuple(_WORKER_HOSTS.value),
            task_index=_TASK_INDEX.value,
            cluster_from=_CLUSTER_FROM.value,
            worker_host_template=_WORKER_HOST_TEMPLATE.value,
            num_workers=_NUM_WORKERS.value,
            cluster_port=_CLUSTER_PORT.value,
        )
        # Built here, after parse_gin, so that gin fills them; the lost-worker report names the same timeouts.
        multi_worker = MultiWorkerConfig()
        strategy = create_strategy(_STRATEGY.value, placement, mirrored=MirroredConfig(), multi_worker=multi_worker)
        model_dir = _MODEL_DIR.value or schedulers.vertex_model_dir()
        with lost_workers_reported(strategy, multi_worker):
            report = train_lib.run(
                mode=_MODE.value,
                model_dir=model_dir,
                strategy=strategy,
                checkpoint=_CHECKPOINT.value,
                profile_steps=_PROFILE_STEPS.value,
                summary_dir=schedulers.vertex_summary_dir(),
            )
        if report is not None and _HYPERTUNE_METRIC.value:
            schedulers.report_hypertune_metric(report, _HYPERTUNE_METRIC.value)
    except (UserInputError, CheckpointWriteError, FloatingPointError, WorkerLostError, JoinTimeoutError) as error:
        logging.error("%s", error)
        sys.exit(f"error: {error}")
    except Preempted as preempted:
        logging.warning("%s", preempted)
        print(preempted, flush=True)
        sys.exit(preempted.exit_code)
    if report is not None:
        print(
            f"Validation mIoU {report['miou']:.4f}, pixel accuracy {report['pixel_accuracy']:.4f} at step "
            f"{report['step']} ({report['num_examples']} images); details in {model_dir}/eval/."
        )


def main() -> None:
    """Console-script entry point (`deeplab-train`)."""
    app.run(_main, argv=schedulers.hyperparameter_flags_to_gin(sys.argv))
