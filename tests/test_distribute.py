"""The strategy factory: what `auto` picks, the cluster and TPU flags, TF_CONFIG checks, communication settings."""

import json
import os
import re
import types
from unittest import mock

import gin
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tests.helpers import REPO_ROOT, make_train_loop, mirrored_strategy
from trainer.cluster import strategies
from trainer.cluster.communication import MirroredConfig, MultiWorkerConfig
from trainer.cluster.lost_workers import WorkerLostError, describe_lost_worker, lost_workers_reported
from trainer.cluster.placement import Placement, cluster_resolver
from trainer.cluster.strategies import StrategyName, resolve_strategy_name
from trainer.cluster.tasks import task_info
from trainer.common.errors import UserInputError
from trainer.core import optim

TWO_WORKERS = ["127.0.0.1:20001", "127.0.0.1:20002"]


@pytest.fixture(autouse=True)
def _no_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    gin.clear_config()
    yield
    gin.clear_config()


def _create_strategy(
    name: str,
    placement: Placement | None = None,
    mirrored: MirroredConfig | None = None,
    multi_worker: MultiWorkerConfig | None = None,
) -> tf.distribute.Strategy:
    """`create_strategy` with the default settings where a test names none."""
    return strategies.create_strategy(
        name, placement, mirrored=mirrored or MirroredConfig(), multi_worker=multi_worker or MultiWorkerConfig()
    )


def _set_tf_config(monkeypatch, config) -> None:
    monkeypatch.setenv("TF_CONFIG", config if isinstance(config, str) else json.dumps(config))


def _fake_gpus(monkeypatch, count: int) -> None:
    real = tf.config.list_physical_devices

    def list_physical_devices(device_type=None):
        if device_type == "GPU":
            return [tf.config.PhysicalDevice(f"/physical_device:GPU:{i}", "GPU") for i in range(count)]
        return real(device_type)

    monkeypatch.setattr(tf.config, "list_physical_devices", list_physical_devices)


def _auto_table() -> list[tuple[str, str, str, str]]:
    with open(os.path.join(REPO_ROOT, "README.md")) as f:
        text = f.read()
    table = text.split("<!-- auto-strategy-table -->")[1].split("<!-- /auto-strategy-table -->")[0]
    lines = [line.strip() for line in table.splitlines() if line.strip().startswith("|")]
    # Skips the header and the |---| line.
    return [tuple(cell.strip().strip("`") for cell in line.strip("|").split("|")) for line in lines[2:]]


def _scenarios(tpu: str, workers: str, gpus: str):
    """Every concrete setting a table row covers: (tpu flag, TF_CONFIG or None, worker_hosts, GPU count)."""
    tpus = {"set": ["local"], "unset": [None]}[tpu]
    clusters = {
        "any": [(None, ()), ({"cluster": {"worker": TWO_WORKERS}, "task": {"type": "worker", "index": 0}}, ())],
        "2 or more": [
            ({"cluster": {"worker": TWO_WORKERS}, "task": {"type": "worker", "index": 1}}, ()),
            ({"cluster": {"chief": TWO_WORKERS[:1], "worker": TWO_WORKERS[1:]}, "task": {"type": "chief"}}, ()),
            (None, tuple(TWO_WORKERS)),
        ],
        "0 or 1": [
            (None, ()),
            ({"cluster": {"worker": TWO_WORKERS[:1]}, "task": {"type": "worker", "index": 0}}, ()),
            ({"cluster": {"worker": TWO_WORKERS[:1], "evaluator": TWO_WORKERS[1:]}, "task": {"type": "worker"}}, ()),
        ],
    }[workers]
    gpu_counts = {"any": [0, 1, 4], "2 or more": [2, 8], "0 or 1": [0, 1]}[gpus]
    for tpu_flag in tpus:
        for tf_config, worker_hosts in clusters:
            if tpu_flag and worker_hosts:
                continue  # rejected by Placement, see test_placement_errors
            for gpu_count in gpu_counts:
                yield tpu_flag, tf_config, worker_hosts, gpu_count


def test_auto_picks_what_the_documented_table_says(monkeypatch):
    rows = _auto_table()
    assert [row[3] for row in rows] == ["tpu", "multi_worker_mirrored", "mirrored", "one_device"]
    checked = 0
    for tpu, workers, gpus, expected in rows:
        for tpu_flag, tf_config, worker_hosts, gpu_count in _scenarios(tpu, workers, gpus):
            with monkeypatch.context() as patch:
                if tf_config is not None:
                    _set_tf_config(patch, tf_config)
                _fake_gpus(patch, gpu_count)
                placement = Placement(tpu=tpu_flag, worker_hosts=worker_hosts, task_index=0 if worker_hosts else None)
                picked = resolve_strategy_name("auto", placement)
            assert picked is StrategyName(expected), (tpu_flag, tf_config, worker_hosts, gpu_count)
            checked += 1
    assert checked >= 20


def test_an_evaluator_task_is_not_a_multi_worker_replica(monkeypatch):
    cluster = {"chief": TWO_WORKERS[:1], "worker": TWO_WORKERS[1:], "evaluator": ["127.0.0.1:20003"]}
    _set_tf_config(monkeypatch, {"cluster": cluster, "task": {"type": "evaluator", "index": 0}})
    assert resolve_strategy_name("auto") is StrategyName.ONE_DEVICE
    _set_tf_config(monkeypatch, {"cluster": cluster, "task": {"type": "worker", "index": 0}})
    assert resolve_strategy_name("auto") is StrategyName.MULTI_WORKER_MIRRORED


def test_auto_on_this_machine_is_one_device_on_the_cpu():
    assert not tf.config.list_physical_devices("GPU")
    strategy = _create_strategy("auto")
    assert isinstance(strategy, tf.distribute.OneDeviceStrategy)
    assert strategy.extended.worker_devices == ("/job:localhost/replica:0/task:0/device:CPU:0",)
    assert task_info(strategy).is_chief


# The documented message (README.md, "Cloud TPU"); the part in brackets is TensorFlow's own.
TPU_MESSAGE = re.compile(
    r"--strategy=tpu --tpu=local: no TPU could be reached from this machine \(NotFoundError: TPUs not found in the "
    r"cluster\..*\)\. Expected a TPU: run on a TPU VM with --tpu=local, or name a TPU that exists with "
    r"--tpu=<name> --tpu_zone=<zone> --gcp_project=<project> .* Without a TPU, use --strategy=auto\."
)


def test_tpu_strategy_without_a_tpu_fails_with_the_documented_message():
    with pytest.raises(UserInputError) as error:
        _create_strategy("tpu", Placement(tpu="local"))
    assert TPU_MESSAGE.fullmatch(str(error.value)), str(error.value)
    with open(os.path.join(REPO_ROOT, "README.md")) as f:
        assert TPU_MESSAGE.search(f.read().replace("\n", " ")) is not None


def test_named_tpu_that_cannot_be_found_is_a_config_error():
    # No Google credentials here, so the Cloud TPU API lookup (cloud-tpu-client) fails before any network call.
    with pytest.raises(UserInputError, match=r"--tpu=my-tpu --tpu_zone=us-central2-b --gcp_project=my-project: no TPU"):
        _create_strategy("tpu", Placement(tpu="my-tpu", tpu_zone="us-central2-b", gcp_project="my-project"))


@pytest.mark.parametrize(
    "placement, message",
    [
        (dict(tpu_zone="us-central1-a"), "--tpu_zone=us-central1-a: expected --tpu=<TPU name> too (it locates a"),
        (dict(tpu="local", gcp_project="p"), "--gcp_project=p: expected only with a TPU name, received --tpu=local"),
        (dict(tpu="grpc://10.0.0.2:8470", tpu_zone="z"), "received --tpu=grpc://10.0.0.2:8470, which needs no"),
        (dict(tpu="local", worker_hosts=TWO_WORKERS, task_index=0), "--tpu and --worker_hosts: expected one of"),
        (dict(worker_hosts=TWO_WORKERS), "expected --task_index too"),
        (dict(task_index=1), "--task_index=1: expected --worker_hosts too"),
        (dict(worker_hosts=TWO_WORKERS, task_index=2), "expected an index into the 2 --worker_hosts (0 to 1), rec"),
        (
            dict(worker_hosts=["host1", "host2:2222"], task_index=0),
            "--worker_hosts: expected a host:port address such as 10.0.0.2:",
        ),
        (dict(worker_hosts=["h:2222", "h:2222"], task_index=0), "expected distinct host:port addresses"),
    ],
)
def test_placement_errors(placement, message):
    with pytest.raises(UserInputError) as error:
        Placement(**placement)
    assert message in str(error.value)


@pytest.mark.parametrize(
    "name, placement, message",
    [
        ("mirrored", Placement(tpu="local"), "--tpu=local: expected --strategy=tpu or auto with it, received mirrored"),
        ("one_device", Placement(worker_hosts=TWO_WORKERS, task_index=0), "expected --strategy=multi_worker_mirr"),
        ("tpu", Placement(), "--strategy=tpu: expected --tpu too"),
        ("multi_worker_mirrored", Placement(), "expected the cluster in the TF_CONFIG environment variable"),
    ],
)
def test_flags_that_do_not_fit_the_strategy(name, placement, message):
    with pytest.raises(UserInputError, match=re.escape(message)):
        _create_strategy(name, placement)


@pytest.mark.parametrize(
    "tf_config, message",
    [
        ("{'cluster': {}}", "TF_CONFIG: expected JSON such as"),
        ({"cluster": {"worker": TWO_WORKERS}}, "TF_CONFIG: expected a JSON object with 'cluster' and 'task' keys"),
        ({"cluster": {"ps": TWO_WORKERS}, "task": {"type": "ps"}}, "received 'ps' (parameter servers are not"),
        (
            {"cluster": {"worker": "h:1"}, "task": {"type": "worker"}},
            "TF_CONFIG cluster.worker: expected a list of host:port",
        ),
        ({"cluster": {"worker": ["h1", "h2"]}, "task": {"type": "worker"}}, "received 'h1'"),
        ({"cluster": {"worker": TWO_WORKERS}, "task": {"type": "wroker"}}, "expected task.type to name a job of"),
        ({"cluster": {"worker": TWO_WORKERS}, "task": {"type": "worker", "index": 2}}, "task.index in [0, 2)"),
        ({"cluster": {"chief": TWO_WORKERS}, "task": {"type": "chief"}}, "expected at most one chief"),
    ],
)
def test_tf_config_typos_are_config_errors(monkeypatch, tf_config, message):
    _set_tf_config(monkeypatch, tf_config)
    with pytest.raises(UserInputError) as error:
        resolve_strategy_name("auto")
    assert message in str(error.value)


def test_tf_config_and_worker_hosts_together_are_refused(monkeypatch):
    _set_tf_config(monkeypatch, {"cluster": {"worker": TWO_WORKERS}, "task": {"type": "worker", "index": 0}})
    with pytest.raises(UserInputError, match="TF_CONFIG and --worker_hosts: expected one description of the cluster"):
        cluster_resolver(Placement(worker_hosts=TWO_WORKERS, task_index=0))


@pytest.mark.parametrize("index", [0, 1])
def test_worker_hosts_build_the_cluster_tf_config_describes(monkeypatch, index):
    from_flags = cluster_resolver(Placement(worker_hosts=(" 127.0.0.1:20001", *TWO_WORKERS[1:]), task_index=index))
    _set_tf_config(monkeypatch, {"cluster": {"worker": TWO_WORKERS}, "task": {"type": "worker", "index": index}})
    from_env = cluster_resolver(Placement())
    assert isinstance(from_env, tf.distribute.cluster_resolver.TFConfigClusterResolver)
    assert from_flags.cluster_spec().as_dict() == from_env.cluster_spec().as_dict() == {"worker": TWO_WORKERS}
    assert (from_flags.task_type, from_flags.task_id) == (from_env.task_type, from_env.task_id) == ("worker", index)
    assert from_flags.rpc_layer == from_env.rpc_layer  # None: gRPC
    assert from_flags.num_accelerators() == {"GPU": 0}


def test_mirrored_cross_device_ops_settings():
    assert MirroredConfig().build(num_gpus=0) is None
    assert isinstance(MirroredConfig("nccl").build(num_gpus=2), tf.distribute.NcclAllReduce)
    assert isinstance(MirroredConfig("hierarchical_copy").build(0), tf.distribute.HierarchicalCopyAllReduce)
    assert isinstance(MirroredConfig("reduce_to_one").build(0), tf.distribute.ReductionToOneDevice)
    with pytest.raises(UserInputError, match=r"mirrored.cross_device_ops: expected one of \{auto, nccl, hier"):
        MirroredConfig("ring")
    with pytest.raises(UserInputError, match=r"received 'nccl' \(NCCL runs on GPUs only\)"):
        _create_strategy("mirrored", mirrored=MirroredConfig("nccl"))


def _train_two_steps(strategy: tf.distribute.Strategy) -> tuple[float, list[np.ndarray]]:
    keras.utils.set_random_seed(0)
    with strategy.scope():
        # Two convolutions are enough: what differs between the strategies is how gradients are summed.
        model = keras.Sequential(
            [keras.layers.Conv2D(4, 3, padding="same", activation="relu"), keras.layers.Conv2D(3, 1)]
        )
        model(tf.zeros([1, 32, 32, 3]))
        optimizer = optim.build_optimizer(optim.OptimizerConfig(learning_rate=0.01), total_steps=10)
        global_step = tf.Variable(0, dtype=tf.int64, aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, size=(8, 32, 32, 3)).astype(np.float32)
    labels = rng.integers(0, 3, size=(8, 32, 32)).astype(np.int32)
    dataset = strategy.distribute_datasets_from_function(
        lambda context: tf.data.Dataset.from_tensor_slices((images, labels)).batch(
            context.get_per_replica_batch_size(4), drop_remainder=True
        )
    )
    train_loop = make_train_loop(strategy, model, optimizer, global_step, ignore_label=255, l2_weight_decay=1e-4)
    outputs = train_loop(iter(dataset), tf.constant(2))
    return float(outputs["loss"]), model.get_weights()


def test_every_cpu_all_reduce_takes_the_same_steps():
    """Mirrored over the two test CPUs with each all-reduce that runs without GPUs: same loss, same weights."""
    reference_loss, reference_weights = _train_two_steps(mirrored_strategy())
    for cross_device_ops in ("hierarchical_copy", "reduce_to_one"):
        strategy = _create_strategy("mirrored", mirrored=MirroredConfig(cross_device_ops))
        assert strategy.num_replicas_in_sync == 2
        loss, weights = _train_two_steps(strategy)
        np.testing.assert_allclose(loss, reference_loss, rtol=1e-6)
        for a, b in zip(weights, reference_weights, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_mirrored_settings_come_from_gin():
    gin.parse_config("mirrored.cross_device_ops = 'reduce_to_one'")
    assert MirroredConfig().cross_device_ops == "reduce_to_one"


def test_multi_worker_settings():
    gin.parse_config(
        "multi_worker.implementation = 'ring'\n"
        "multi_worker.timeout_seconds = 120\n"
        "multi_worker.heartbeat_timeout_seconds = 5"
    )
    options = MultiWorkerConfig().communication_options()
    assert options.implementation == tf.distribute.experimental.CommunicationImplementation.RING
    assert options.timeout_seconds == 120
    assert MultiWorkerConfig().heartbeat_timeout_seconds == 5
    assert MultiWorkerConfig(implementation="nccl").communication_options().implementation.value == "NCCL"
    for bad, message in (
        (dict(implementation="grpc"), "multi_worker.implementation: expected one of {auto, ring, nccl}"),
        (dict(timeout_seconds=0), "multi_worker.timeout_seconds: expected a positive number, received 0"),
        (dict(heartbeat_timeout_seconds=2.5), "heartbeat_timeout_seconds: expected a positive integer, received 2.5"),
    ):
        with pytest.raises(UserInputError, match=re.escape(message)):
            MultiWorkerConfig(**bad)


def test_tpu_defaults_for_the_loop_and_precision():
    tpu, mirrored = StrategyName.TPU, StrategyName.MIRRORED
    assert strategies.default_steps_per_loop(tpu) == 500 and strategies.default_precision("tpu") == "mixed_bfloat16"
    assert strategies.default_steps_per_loop(mirrored) == 50 and strategies.default_precision(mirrored) == "float32"
    assert strategies.default_precision(mirrored_strategy()) == "float32"
    assert strategies.strategy_name(mirrored_strategy()) is StrategyName.MIRRORED
    with pytest.raises(ValueError, match="received 'auto'"):
        strategies.default_precision("auto")


def _fake_multi_worker_strategy(task_id: int):
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec({"worker": TWO_WORKERS}), task_type="worker", task_id=task_id
    )
    return types.SimpleNamespace(cluster_resolver=resolver)


# The error TensorFlow 2.21 raises on worker 0 when worker 1 stops sending heartbeats (tests/
# test_multi_worker_faults.py sees it for real).
HEARTBEAT_LOST = tf.errors.UnavailableError(
    None,
    None,
    "Collective ops is aborted by: Error reported from /job:worker/task:1: The following tasks are unhealthy "
    "(stopped sending heartbeats):\n/job:worker/replica:0/task:1\nThe tasks have crashed.",
)


def test_a_lost_worker_is_named_with_its_address():
    error = HEARTBEAT_LOST
    message = describe_lost_worker(error, _fake_multi_worker_strategy(0), MultiWorkerConfig())
    assert message.startswith(
        "Lost /job:worker/task:1 (127.0.0.1:20002) of the 2-worker MultiWorkerMirrored job: it sent no heartbeat "
        "for multi_worker.heartbeat_timeout_seconds=10 s."
    )
    assert "This worker (/job:worker/task:0) stops too." in message and "launch_local.py" in message
    # When the chief dies, worker 1's next collective fails on the broken connection to it.
    error = tf.errors.UnavailableError(
        None, None, "Additional GRPC error information from remote target /job:worker/replica:0/task:0 while calling"
    )
    message = describe_lost_worker(error, _fake_multi_worker_strategy(1), MultiWorkerConfig())
    assert message.startswith(
        "Lost /job:worker/task:0 (127.0.0.1:20001) of the 2-worker MultiWorkerMirrored job: the connection to it "
        "failed (UnavailableError)."
    )
    error = tf.errors.DeadlineExceededError(None, None, "Collective ops timed out")
    assert "did not complete within multi_worker.timeout_seconds=None s" in describe_lost_worker(
        error, _fake_multi_worker_strategy(0), MultiWorkerConfig()
    )


def test_errors_of_single_host_strategies_pass_through():
    error = tf.errors.UnavailableError(None, None, "socket closed")
    with pytest.raises(tf.errors.UnavailableError, match="socket closed"):
        with lost_workers_reported(mirrored_strategy(), MultiWorkerConfig()):
            raise error


def _multi_worker_strategy_double(task_id: int) -> mock.Mock:
    """Passes for a MultiWorkerMirroredStrategy (isinstance) without a cluster to join."""
    strategy = mock.Mock(spec=tf.distribute.MultiWorkerMirroredStrategy)
    strategy.cluster_resolver = _fake_multi_worker_strategy(task_id).cluster_resolver
    return strategy


def test_the_lost_worker_report_names_the_timeouts_of_the_strategy_that_was_built():
    # Gin says otherwise, and is not what the strategy was built with: the report must not read it.
    gin.parse_config("multi_worker.heartbeat_timeout_seconds = 30\nmulti_worker.timeout_seconds = 40")
    built_with = MultiWorkerConfig(heartbeat_timeout_seconds=7, timeout_seconds=90)
    with pytest.raises(WorkerLostError, match=r"multi_worker\.heartbeat_timeout_seconds=7 s\.") as lost:
        with lost_workers_reported(_multi_worker_strategy_double(0), built_with):
            raise HEARTBEAT_LOST
    assert isinstance(lost.value.__cause__, tf.errors.UnavailableError)
    timed_out = tf.errors.DeadlineExceededError(None, None, "Collective ops timed out")
    with pytest.raises(WorkerLostError, match=r"within multi_worker\.timeout_seconds=90 s:"):
        with lost_workers_reported(_multi_worker_strategy_double(0), built_with):
            raise timed_out
