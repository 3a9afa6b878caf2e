"""Worker failure in a 2-worker MultiWorkerMirrored job: the survivor stops with an error naming the lost worker,
and under scripts/launch_local.py the job restarts and finishes at the right step.

Worker 1 is SIGKILLed mid-run; a 3 s heartbeat timeout (multi_worker.heartbeat_timeout_seconds) keeps it short.
"""

import os
import re
import signal
import sys

import pytest
import tensorflow as tf

from tests import cluster_helpers
from tests.helpers import REPO_ROOT
from trainer.cluster import launch

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]

HEARTBEAT = "multi_worker.heartbeat_timeout_seconds=3"


def test_without_a_launcher_the_survivor_exits_with_an_error_naming_the_lost_worker(tmp_path):
    hosts = [f"127.0.0.1:{port}" for port in launch.free_ports(2)]
    flags = cluster_helpers.smoke_flags(
        str(tmp_path / "data"), str(tmp_path / "run"), "train.steps=500", "train.steps_per_loop=1", HEARTBEAT
    )
    workers = []

    def kill_worker_1(process, line):
        del process
        # Both workers are in the training loop once step 3 is logged.
        if "step 3/500" in line:
            workers[1].kill()

    workers.append(
        cluster_helpers.trainer(flags, env={"TF_CONFIG": launch.worker_tf_config(hosts, 0)}, on_line=kill_worker_1)
    )
    workers.append(cluster_helpers.trainer(flags, env={"TF_CONFIG": launch.worker_tf_config(hosts, 1)}))
    try:
        # Generous: the point is that it returns at all (a hang would wait for ever), not how fast.
        code = workers[0].wait(timeout=240)
    finally:
        for worker in workers:
            worker.kill()
    output = workers[0].output
    assert code == 1, output[-3000:]
    assert workers[1].process.returncode == -signal.SIGKILL
    assert (
        f"error: Lost /job:worker/task:1 ({hosts[1]}) of the 2-worker MultiWorkerMirrored job: it sent no heartbeat "
        "for multi_worker.heartbeat_timeout_seconds=3 s. It crashed, was killed or preempted: its own log says why. "
        "This worker (/job:worker/task:0) stops too." in output
    ), output[-3000:]
    assert "Traceback" not in output
    assert "step 500/500" not in output


def test_under_the_launcher_the_job_restarts_and_finishes_at_the_right_step(tmp_path):
    model_dir = tmp_path / "run"
    steps = 24
    flags = cluster_helpers.smoke_flags(
        str(tmp_path / "data"),
        str(model_dir),
        f"train.steps={steps}",
        "train.steps_per_loop=2",
        "train.checkpoint_every_steps=4",
        HEARTBEAT,
    )
    pids: dict[int, int] = {}

    def kill_worker_1_after_a_checkpoint(process, line):
        del process
        started = re.match(r"\[launch\] worker (\d+): pid (\d+)", line)
        if started:
            pids[int(started.group(1))] = int(started.group(2))
        # Only in the first attempt: the launcher logs "attempt 2" before starting the restarted workers.
        if "ckpt-8." in line and line.startswith("[worker 0]") and "attempt 2" not in launcher.output:
            os.kill(pids[1], signal.SIGKILL)

    launcher = cluster_helpers.Process(
        [
            sys.executable,
            os.path.join(REPO_ROOT, "scripts", "launch_local.py"),
            "--workers=2",
            "--max_restarts=2",
            "--",
            *flags,
        ],
        on_line=kill_worker_1_after_a_checkpoint,
    )
    code = launcher.wait(timeout=400)
    output = launcher.output
    assert code == 0, output[-4000:]
    assert "[launch] worker 1 exited with code 137; stopping the others" in output
    assert "[launch] restarting all 2 workers (1 of 2 restarts)" in output
    assert "[launch] attempt 2:" in output and "[launch] attempt 3:" not in output
    # The restarted workers resumed from a checkpoint (step 8 or later), not from scratch, and finished.
    after_restart = output.split("[launch] attempt 2:")[1]
    # Only the chief (worker 0) prints progress lines; the other worker logs at warning level.
    logged = [int(s) for s in re.findall(rf"\[worker 0\] .*step (\d+)/{steps} ", after_restart)]
    assert logged[0] >= 10 and logged[-1] == steps, logged
    assert output.rstrip().endswith("[launch] all 2 workers finished")
    reader = tf.train.load_checkpoint(str(model_dir / "checkpoints"))
    assert int(reader.get_tensor("global_step/.ATTRIBUTES/VARIABLE_VALUE")) == steps
