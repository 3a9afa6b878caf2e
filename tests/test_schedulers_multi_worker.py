"""Two real workers: one described by Kubernetes' variables, one by Slurm's, train in step; a missing one is named."""

import os
import socket

import pytest

from tests import cluster_helpers
from trainer.cluster import launch

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]


def _ports_ending_in_0_and_1() -> int:
    """A free port base P (a multiple of 10) with P+1 free too: the template 127.0.0.1:<P/10>{index} names both."""
    for port in launch.free_ports(20):
        base = port - port % 10
        try:
            with socket.create_server(("", base)), socket.create_server(("", base + 1)):
                return base
        except OSError:
            continue
    raise AssertionError("no free pair of ports P, P+1 with P a multiple of 10")


def test_a_kubernetes_worker_and_a_slurm_worker_of_the_same_cluster_train_in_step(tmp_path):
    base = _ports_ending_in_0_and_1()
    flags = cluster_helpers.smoke_flags(str(tmp_path / "data"), str(tmp_path / "run"), "train.steps=2")
    kubernetes = cluster_helpers.trainer(
        [
            *flags,
            "--cluster_from=kubernetes",
            f"--worker_host_template=127.0.0.1:{base // 10}{{index}}",
            "--num_workers=2",
        ],
        env={"JOB_COMPLETION_INDEX": "0"},
    )
    slurm_env = {
        "SLURM_PROCID": "1",
        "SLURM_STEP_NUM_TASKS": "2",
        "SLURM_STEP_NODELIST": "127.0.0.1",
        "SLURM_STEP_TASKS_PER_NODE": "2",
    }
    slurm = cluster_helpers.trainer([*flags, "--cluster_from=slurm", f"--cluster_port={base}"], env=slurm_env)
    codes = cluster_helpers.wait_all([kubernetes, slurm], timeout=300)
    for code, worker in zip(codes, [kubernetes, slurm], strict=True):
        assert code == 0, worker.output[-3000:]
        assert "Strategy multi_worker_mirrored (CollectiveAllReduceStrategy) with 2 replicas." in worker.output
    assert os.path.exists(tmp_path / "run" / "checkpoints" / "ckpt-2.index")


def test_a_worker_that_never_starts_is_named_after_the_join_timeout(tmp_path):
    hosts = [f"127.0.0.1:{port}" for port in launch.free_ports(2)]
    flags = cluster_helpers.smoke_flags(
        str(tmp_path / "data"), str(tmp_path / "run"), "multi_worker.join_timeout_seconds=3"
    )
    worker = cluster_helpers.trainer([*flags, f"--worker_hosts={','.join(hosts)}", "--task_index=0"])
    assert worker.wait(timeout=120) == 1
    assert (
        f"error: /job:worker/task:1 ({hosts[1]}) did not join within multi_worker.join_timeout_seconds=3 s "
        "(--worker_hosts)" in worker.output
    )
