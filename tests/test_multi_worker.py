"""Two real worker processes on 127.0.0.1 train the smoke config in sync under MultiWorkerMirrored."""

import json
import os
import socket
import subprocess
import sys

import pytest

from tests.helpers import REPO_ROOT, SMOKE_GIN

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]

NUM_WORKERS = 2


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_two_workers_train_evaluate_and_only_the_chief_keeps_checkpoints(tmp_path):
    workers = [f"127.0.0.1:{port}" for port in _free_ports(NUM_WORKERS)]
    model_dir = tmp_path / "run"
    processes = []
    for index in range(NUM_WORKERS):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = dict(os.environ, TF_CONFIG=json.dumps(tf_config), TF_CPP_MIN_LOG_LEVEL="2")
        processes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "trainer",
                    f"--gin_file={SMOKE_GIN}",
                    f"--gin_bindings=synthetic_shapes.data_dir='{tmp_path / 'data'}'",
                    f"--model_dir={model_dir}",
                    "--strategy=multi_worker_mirrored",
                    "--mode=train_and_eval",
                ],
                cwd=REPO_ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=300)[0])
    finally:
        for process in processes:
            process.kill()
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output[-3000:]
    for output in outputs:
        assert "with 2 replicas" in output
    assert (model_dir / "checkpoints" / "ckpt-6.index").exists()
    assert not [name for name in os.listdir(model_dir) if name.startswith(".tmp_worker")]
    with open(model_dir / "eval" / "metrics_step_00000006.json") as f:
        report = json.load(f)
    assert report["num_examples"] == 8 and 0.0 <= report["miou"] <= 1.0
    # Both workers evaluated the same weights on their halves of the data and agree on the summed result.
    assert sum("Validation mIoU" in output for output in outputs) == NUM_WORKERS
    assert len({line for output in outputs for line in output.splitlines() if "Validation mIoU" in line}) == 1
