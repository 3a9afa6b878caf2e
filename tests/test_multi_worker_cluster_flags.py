"""A 2-worker job described by --worker_hosts/--task_index trains exactly as the same job described by TF_CONFIG.

Each run is two real worker processes on 127.0.0.1; the chief alone writes summaries, the operative config
and checkpoints.
"""

import glob
import os
import socket

import numpy as np
import pytest
import tensorflow as tf

from tests import cluster_helpers
from tests.helpers import scalar_events
from trainer.cluster import launch

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]

NUM_WORKERS = 2
STEPS = 6


def _run_job(tmp_path, name: str, use_flags: bool) -> str:
    model_dir = str(tmp_path / name)
    hosts = [f"127.0.0.1:{port}" for port in launch.free_ports(NUM_WORKERS)]
    flags = cluster_helpers.smoke_flags(
        str(tmp_path / "data"), model_dir, f"train.steps={STEPS}", "train.steps_per_loop=1"
    )
    workers = []
    for index in range(NUM_WORKERS):
        if use_flags:
            cluster = [f"--worker_hosts={','.join(hosts)}", f"--task_index={index}"]
            workers.append(cluster_helpers.trainer([*flags, *cluster]))
        else:
            env = {"TF_CONFIG": launch.worker_tf_config(hosts, index)}
            workers.append(cluster_helpers.trainer(flags, env=env))
    codes = cluster_helpers.wait_all(workers, timeout=300)
    for code, worker in zip(codes, workers, strict=True):
        assert code == 0, worker.output[-3000:]
        assert "Strategy multi_worker_mirrored (CollectiveAllReduceStrategy) with 2 replicas." in worker.output
    return model_dir


def _final_weights(model_dir: str) -> dict[str, np.ndarray]:
    reader = tf.train.load_checkpoint(os.path.join(model_dir, "checkpoints"))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


def test_worker_hosts_flags_train_step_for_step_like_tf_config(tmp_path):
    from_env = _run_job(tmp_path, "tf_config", use_flags=False)
    from_flags = _run_job(tmp_path, "flags", use_flags=True)

    losses_env = scalar_events(os.path.join(from_env, "train"))["loss"]
    losses_flags = scalar_events(os.path.join(from_flags, "train"))["loss"]
    assert [step for step, _ in losses_env] == list(range(1, STEPS + 1))
    assert losses_flags == losses_env
    # Training happened: the loss moved.
    assert len({value for _, value in losses_env}) > 1

    weights_env, weights_flags = _final_weights(from_env), _final_weights(from_flags)
    assert weights_env.keys() == weights_flags.keys()
    assert int(weights_env["global_step/.ATTRIBUTES/VARIABLE_VALUE"]) == STEPS
    for name, value in weights_env.items():
        np.testing.assert_array_equal(weights_flags[name], value, err_msg=name)

    for model_dir in (from_env, from_flags):
        # The chief alone writes: one train event file (a train job has no eval stream), the operative config,
        # the manifest, checkpoints only in checkpoints/ (the other worker's temporary copies are gone).
        assert len(glob.glob(os.path.join(model_dir, "train", "events.out.tfevents.*"))) == 1
        assert sorted(os.listdir(model_dir)) == [
            "checkpoints",
            "manifest.json",
            "operative_config.gin",
            "train",
        ]


def test_a_port_in_use_is_a_config_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        hosts = [f"127.0.0.1:{taken.getsockname()[1]}", f"127.0.0.1:{launch.free_ports(1)[0]}"]
        flags = cluster_helpers.smoke_flags(str(tmp_path / "data"), str(tmp_path / "run"))
        worker = cluster_helpers.trainer([*flags, f"--worker_hosts={','.join(hosts)}", "--task_index=0"])
        assert worker.wait(timeout=120) == 1
    assert (
        f"error: --worker_hosts: this worker (/job:worker/task:0) could not listen on the port of its address "
        f"{hosts[0]} (address already in use). Expected a free port" in worker.output
    )
    assert "Traceback" not in worker.output
