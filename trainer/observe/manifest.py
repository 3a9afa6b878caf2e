"""The run manifest: what ran, where, on what and with which software, as `manifest.json` and a text summary.

A run in a training mode writes `model_dir/manifest.json` (a resumed run rewrites it and records the step it
resumed from); runs in other modes (e.g. eval) write `model_dir/manifest_<mode>.json`, so an evaluator
started on a training directory does not overwrite the trainer's manifest. Only the chief writes.
"""

import datetime
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys

import psutil
import tensorflow as tf
from absl import flags

from trainer.cluster.strategies import StrategyName
from trainer.cluster.tasks import TaskInfo
from trainer.common.files import write_json_atomically
from trainer.core.config import Mode
from trainer.observe import summaries

MANIFEST_FILE = "manifest.json"
TEXT_TAG = "manifest"
PACKAGES = (
    "deeplab-trainer",
    "tensorflow",
    "tf-keras",
    "gin-config",
    "absl-py",
    "tensorboard",
    "tensorflow-datasets",
    "numpy",
)
_TRAINING_MODES = (Mode.TRAIN, Mode.TRAIN_AND_EVAL)
# The `--strategy` name and public class name of each strategy (MultiWorkerMirroredStrategy's Python class is
# called CollectiveAllReduceStrategy; none of these four subclasses another).
_STRATEGY_CLASSES = (
    (StrategyName.TPU.value, "TPUStrategy", tf.distribute.TPUStrategy),
    (
        StrategyName.MULTI_WORKER_MIRRORED.value,
        "MultiWorkerMirroredStrategy",
        tf.distribute.MultiWorkerMirroredStrategy,
    ),
    (StrategyName.MIRRORED.value, "MirroredStrategy", tf.distribute.MirroredStrategy),
    (StrategyName.ONE_DEVICE.value, "OneDeviceStrategy", tf.distribute.OneDeviceStrategy),
)
_REPO_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def manifest_filename(mode: "str | Mode") -> str:
    """`manifest.json` for the training modes, `manifest_<mode>.json` for the others."""
    mode = Mode.parse(mode)
    return MANIFEST_FILE if mode in _TRAINING_MODES else f"manifest_{mode.value}.json"


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages a run depends on (None for one that is not installed)."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_state(directory: str = _REPO_DIR) -> dict[str, str | bool] | None:
    """The commit of the trainer's source checkout and whether tracked files differ from it; None outside git."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", directory, *args], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        # An installed package, a source tarball or a machine without git: there is no commit to record.
        return None
    return {"commit": commit, "dirty": dirty}


def device_descriptions() -> list[dict]:
    """This host's logical devices, with the model and compute capability of each GPU."""
    gpu_details = [tf.config.experimental.get_device_details(gpu) for gpu in tf.config.list_physical_devices("GPU")]
    devices = []
    for device in tf.config.list_logical_devices():
        entry = {"name": device.name, "type": device.device_type}
        if device.device_type == "GPU":
            index = tf.DeviceSpec.from_string(device.name).device_index or 0
            if index < len(gpu_details):
                details = gpu_details[index]
                entry["model"] = details.get("device_name")
                if "compute_capability" in details:
                    entry["compute_capability"] = ".".join(str(v) for v in details["compute_capability"])
        devices.append(entry)
    return devices


def strategy_description(strategy: tf.distribute.Strategy, task: TaskInfo) -> dict:
    """The strategy (its `--strategy` name and class), replicas, this host's replica devices, the cluster and this
    task's place in it."""
    resolver = getattr(strategy, "cluster_resolver", None)
    cluster = {}
    if resolver is not None:
        try:
            cluster = resolver.cluster_spec().as_dict()
        except (ValueError, RuntimeError):
            cluster = {}
    num_workers = sum(len(tasks) for job, tasks in cluster.items() if job in ("chief", "worker")) or 1
    name, public_class = next(
        ((name, class_name) for name, class_name, cls in _STRATEGY_CLASSES if isinstance(strategy, cls)),
        ("other", type(strategy).__name__),
    )
    return {
        "name": name,
        "class": public_class,
        "num_replicas_in_sync": strategy.num_replicas_in_sync,
        "local_replica_devices": list(strategy.extended.worker_devices),
        "num_workers": num_workers,
        "cluster": cluster,
        "task": {"type": task.task_type, "id": task.task_id, "is_chief": task.is_chief},
    }


def trainer_flags() -> dict:
    """The trainer's own command-line flags and their values (empty when absl flags were not parsed)."""
    if not flags.FLAGS.is_parsed():
        return {}
    return {
        flag.name: flag.value
        for module, module_flags in flags.FLAGS.flags_by_module_dict().items()
        if module.split(".")[0] == "trainer"
        for flag in module_flags
        # An alias (e.g. --gin_param) repeats the value of the flag it stands for.
        if type(flag).__name__ != "_FlagAlias"
    }


def build_manifest(mode: "str | Mode", model_dir: str, strategy: tf.distribute.Strategy, task: TaskInfo, step: int):
    """Returns the manifest of a run that starts (or resumes) at global `step`, as a JSON-ready dict."""
    now = datetime.datetime.now(datetime.UTC)
    process_start = datetime.datetime.fromtimestamp(psutil.Process().create_time(), datetime.UTC)
    return {
        "mode": Mode.parse(mode).value,
        "model_dir": model_dir,
        "start_step": step,
        "process_start_time": process_start.isoformat(timespec="seconds"),
        "written_at": now.isoformat(timespec="seconds"),
        "hostname": socket.gethostname(),
        "command_line": list(sys.argv),
        "flags": trainer_flags(),
        "strategy": strategy_description(strategy, task),
        "devices": device_descriptions(),
        "packages": package_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "tensorflow_build": {key: _jsonable(value) for key, value in tf.sysconfig.get_build_info().items()},
        "git": git_state(),
    }


def _jsonable(value):
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return str(value)


def write_run_manifest(
    mode: "str | Mode",
    model_dir: str,
    strategy: tf.distribute.Strategy,
    task: TaskInfo,
    writer: tf.summary.SummaryWriter,
    step: int,
) -> dict:
    """Builds the manifest; on the chief writes it to `model_dir` and as a text summary at `step`. Returns it."""
    record = build_manifest(mode, model_dir, strategy, task, step)
    if task.is_chief:
        tf.io.gfile.makedirs(model_dir)
        write_json_atomically(os.path.join(model_dir, manifest_filename(mode)), record)
        text = json.dumps(record, indent=2, default=str)
        summaries.write_text(writer, TEXT_TAG, summaries.markdown_code(text), step)
    return record
