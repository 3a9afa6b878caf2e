"""Nothing lost: SIGTERM checkpoints and exits with the documented code; SIGKILL + resume is bitwise exact."""

import json
import os
import signal
import socket
import time

import pytest

from devtools import chaos
from tests.helpers import REPO_ROOT, SMOKE_GIN
from trainer.cluster.preemption import EXIT_CODE_PREEMPTED

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]

_STEPS = 8
_TIMEOUT = 300
_LONG_LOOPS = (
    "--gin_bindings=train.steps=1000",
    "--gin_bindings=train.steps_per_loop=500",
    "--gin_bindings=train.checkpoint_every_steps=500",
)


def _flags(data_dir, model_dir, *extra):
    return [
        f"--gin_file={SMOKE_GIN}",
        f"--gin_bindings=synthetic_shapes.data_dir='{data_dir}'",
        f"--gin_bindings=train.steps={_STEPS}",
        "--gin_bindings=train.steps_per_loop=1",
        "--gin_bindings=train.checkpoint_every_steps=3",
        "--gin_bindings=train.deterministic=True",
        f"--model_dir={model_dir}",
        "--mode=train",
        "--strategy=one_device",
        *extra,
    ]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run: (data_dir, final checkpoint values)."""
    root = tmp_path_factory.mktemp("reference")
    data_dir, model_dir = str(root / "data"), str(root / "run")
    assert chaos.train_to_completion(_flags(data_dir, model_dir), str(root / "log"), _TIMEOUT, REPO_ROOT) == 0
    step, values = chaos.checkpoint_values(model_dir)
    assert step == _STEPS
    return data_dir, values


def _sigterm_inside_the_second_loop(process: chaos.TrainerProcess) -> float:
    """SIGTERM one second into the second host loop of 500 steps; returns when it was sent."""
    assert process.wait_for_step(500, _TIMEOUT)
    time.sleep(1.0)
    process.send(signal.SIGTERM)
    return time.monotonic()


def test_sigterm_inside_a_500_step_loop_saves_within_3_steps_and_exits_with_preemption_exit_code(reference, tmp_path):
    data_dir, _ = reference
    model_dir = str(tmp_path / "run")
    log_path = str(tmp_path / "log")
    flags = [*_flags(data_dir, model_dir), *_LONG_LOOPS, "--gin_bindings=preemption.exit_code=75"]
    process = chaos.TrainerProcess(flags, log_path, REPO_ROOT)
    signalled = _sigterm_inside_the_second_loop(process)
    assert process.wait(_TIMEOUT) == 75
    print(f"SIGTERM to exit: {time.monotonic() - signalled:.1f} s")
    saved_step, _ = chaos.checkpoint_values(model_dir)
    # The checkpoint is of the step the run reached, within 3 steps of the signal, long before the loop's end
    # (step 500 itself when the signal lands between the loops, on a loaded machine).
    assert saved_step == process.preempted_step
    assert process.sigterm_step <= saved_step <= process.sigterm_step + 3
    assert 500 <= saved_step < 1000


@pytest.mark.parametrize("kill_after_step", [1, 4, 6])
def test_sigkill_then_resume_ends_bitwise_equal_to_an_uninterrupted_run(reference, tmp_path, kill_after_step):
    data_dir, expected = reference
    model_dir = str(tmp_path / "run")
    log_path = str(tmp_path / "log")
    flags = _flags(data_dir, model_dir)
    interruption = chaos.interrupt_run(flags, model_dir, signal.SIGKILL, kill_after_step, log_path, _TIMEOUT, REPO_ROOT)
    assert interruption.exit_code == -signal.SIGKILL
    assert not interruption.lost_checkpoint
    assert interruption.restorable_step < _STEPS
    assert chaos.train_to_completion(flags, log_path, _TIMEOUT, REPO_ROOT) == 0
    step, values = chaos.checkpoint_values(model_dir)
    assert step == _STEPS
    assert chaos.mismatched_keys(expected, values) == []
    assert os.path.exists(os.path.join(model_dir, "checkpoints", f"ckpt-{_STEPS}.index"))


def test_sigterm_to_one_worker_makes_all_workers_save_the_same_step(reference, tmp_path):
    """Under MultiWorkerMirrored the loop sums the workers' stop flags each step, so all stop after the same one."""
    data_dir, _ = reference
    model_dir = str(tmp_path / "run")
    sockets = [socket.socket() for _ in range(2)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    workers = [f"127.0.0.1:{s.getsockname()[1]}" for s in sockets]
    for s in sockets:
        s.close()
    flags = [*_flags(data_dir, model_dir)[:-1], *_LONG_LOOPS, "--strategy=multi_worker_mirrored"]
    processes = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        processes.append(
            chaos.TrainerProcess(
                flags, str(tmp_path / f"log{index}"), REPO_ROOT, env={"TF_CONFIG": json.dumps(tf_config)}
            )
        )
    try:
        assert processes[0].wait_for_step(500, _TIMEOUT)
        time.sleep(1.0)
        processes[1].send(signal.SIGTERM)
        signalled = time.monotonic()
        codes = [process.wait(_TIMEOUT) for process in processes]
        print(f"SIGTERM to both exits: {time.monotonic() - signalled:.1f} s")
    finally:
        for process in processes:
            process.kill_if_running()
    logs = [open(tmp_path / f"log{index}").read() for index in range(2)]
    assert codes == [EXIT_CODE_PREEMPTED, EXIT_CODE_PREEMPTED], [log[-2000:] for log in logs]
    saved_step, _ = chaos.checkpoint_values(model_dir)
    assert 500 <= saved_step < 1000
    assert processes[1].sigterm_step <= saved_step <= processes[1].sigterm_step + 3
    for log in logs:
        assert f"Preempted (SIGTERM): saved the checkpoint of step {saved_step}" in log
    assert not [name for name in os.listdir(model_dir) if name.startswith(".tmp_worker")]
