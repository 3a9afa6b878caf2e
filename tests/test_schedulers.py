"""The cluster from Kubernetes and Slurm environments, Vertex AI's directories and metric, the join timeout."""

import json
import socket

import pytest

from trainer.cluster import join, schedulers
from trainer.cluster.placement import Placement, cluster_resolver
from trainer.common.errors import UserInputError

_HOSTS = ["node-0:2222", "node-1:2222"]


def _tf_config_cluster(monkeypatch, index):
    monkeypatch.setenv(
        "TF_CONFIG", json.dumps({"cluster": {"worker": _HOSTS}, "task": {"type": "worker", "index": index}})
    )
    resolver = cluster_resolver(Placement())
    described = resolver.cluster_spec().as_dict(), resolver.task_type, resolver.task_id
    monkeypatch.delenv("TF_CONFIG")
    return described


@pytest.mark.parametrize("index", [0, 1])
def test_kubernetes_and_slurm_build_the_cluster_tf_config_describes(monkeypatch, index):
    expected = _tf_config_cluster(monkeypatch, index)
    monkeypatch.setenv("JOB_COMPLETION_INDEX", str(index))
    placement = Placement(cluster_from="kubernetes", worker_host_template="node-{index}:2222", num_workers=2)
    kubernetes = cluster_resolver(placement)
    assert (kubernetes.cluster_spec().as_dict(), kubernetes.task_type, kubernetes.task_id) == expected
    for name, value in {
        "SLURM_PROCID": str(index),
        "SLURM_STEP_NUM_TASKS": "2",
        "SLURM_STEP_NODELIST": "node-[0-1]",
        "SLURM_STEP_TASKS_PER_NODE": "1(x2)",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    slurm = cluster_resolver(Placement(cluster_from="slurm", cluster_port=2222))
    assert (slurm.cluster_spec().as_dict(), slurm.task_type, slurm.task_id) == expected


def test_scheduler_flags_are_checked(monkeypatch):
    with pytest.raises(UserInputError, match="--worker_host_template: expected host:port with {index}"):
        Placement(cluster_from="kubernetes", worker_host_template="node:2222", num_workers=2)
    with pytest.raises(UserInputError, match="--worker_host_template: expected only with --cluster_from=kubernetes"):
        Placement(worker_host_template="node-{index}:2222")
    with pytest.raises(UserInputError, match="--num_workers"):
        Placement(cluster_from="kubernetes", worker_host_template="node-{index}:2222")
    monkeypatch.delenv("JOB_COMPLETION_INDEX", raising=False)
    with pytest.raises(UserInputError, match="expected JOB_COMPLETION_INDEX in 0-1"):
        cluster_resolver(Placement(cluster_from="kubernetes", worker_host_template="n-{index}:1", num_workers=2))
    monkeypatch.delenv("SLURM_PROCID", raising=False)
    with pytest.raises(UserInputError, match="--cluster_from=slurm: expected to run as a task of a Slurm job step"):
        cluster_resolver(Placement(cluster_from="slurm"))


def test_vertex_directories_and_hyperparameter_flags(monkeypatch, tmp_path):
    monkeypatch.setenv("AIP_CHECKPOINT_DIR", "gs://b/out/checkpoints/")
    monkeypatch.setenv("AIP_TENSORBOARD_LOG_DIR", "gs://b/out/logs/")
    assert schedulers.vertex_model_dir() == "gs://b/out"
    assert schedulers.vertex_summary_dir() == "gs://b/out/logs"
    assert schedulers.hyperparameter_flags_to_gin(["prog", "--optimizer.learning_rate=0.01", "--mode=train"]) == [
        "prog",
        "--gin_bindings=optimizer.learning_rate=0.01",
        "--mode=train",
    ]
    metric_file = tmp_path / "metrics"
    monkeypatch.setenv("CLOUD_ML_HP_METRIC_FILE", str(metric_file))
    schedulers.report_hypertune_metric({"miou": 0.25, "step": 6}, "miou")
    reported = json.loads(metric_file.read_text().strip().splitlines()[-1])
    assert reported["miou"] == "0.25" and reported["global_step"] == "6"
    with pytest.raises(UserInputError, match="--hypertune_metric=iou: expected one of"):
        schedulers.report_hypertune_metric({"miou": 0.25, "step": 6}, "iou")


def test_a_worker_that_never_joins_is_named_after_the_join_timeout():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        mine, missing = f"127.0.0.1:{probe.getsockname()[1]}", "127.0.0.1:1"
    cluster = {"worker": [mine, missing]}
    with pytest.raises(
        join.JoinTimeoutError,
        match=r"/job:worker/task:1 \(127.0.0.1:1\) did not join within multi_worker.join_timeout_seconds=0.5 s",
    ):
        join.wait_for_peers(cluster, "worker", 0, 0.5, "TF_CONFIG", poll_seconds=0.1)


def test_a_worker_whose_peers_listen_joins_and_frees_its_port():
    with socket.create_server(("127.0.0.1", 0)) as peer:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        cluster = {"chief": [f"127.0.0.1:{peer.getsockname()[1]}"], "worker": [f"127.0.0.1:{port}"]}
        join.wait_for_peers(cluster, "worker", 0, 5, "TF_CONFIG")
    with socket.create_server(("", port)):
        pass  # free again for TensorFlow's gRPC server


def test_a_taken_port_is_a_user_error():
    with socket.create_server(("", 0)) as taken:
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(UserInputError, match=f"could not listen on the port of its address {address}"):
            join.wait_for_peers({"worker": [address, "127.0.0.1:1"]}, "worker", 0, 5, "--worker_hosts")
