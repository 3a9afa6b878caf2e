"""The local multi-worker launcher, with stand-in workers (no TensorFlow): TF_CONFIG, output, restarts, exit codes."""

import io
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap

import pytest

from tests.helpers import REPO_ROOT
from trainer.cluster import launch
from trainer.common.errors import UserInputError

# Stands in for `python -m trainer`: records its TF_CONFIG, then behaves as --plan says for (attempt, index):
# "ok" exits 0, "fail" exits 3, "hang" sleeps until killed. The attempt is counted in --state.
FAKE_TRAINER = textwrap.dedent(
    """\
    #!{python}
    import json, os, sys, time
    args = dict(arg.lstrip("-").split("=", 1) for arg in sys.argv[3:])
    config = json.loads(os.environ["TF_CONFIG"])
    index = config["task"]["index"]
    counter = os.path.join(args["state"], f"attempts-{{index}}")
    attempt = len(open(counter).read()) if os.path.exists(counter) else 0
    with open(counter, "a") as f:
        f.write("x")
    with open(os.path.join(args["state"], f"tf_config-{{attempt}}-{{index}}.json"), "w") as f:
        json.dump(config, f)
    plan = json.loads(args["plan"])
    action = plan[min(attempt, len(plan) - 1)][index]
    print(f"attempt {{attempt}} worker {{index}}: {{action}}", flush=True)
    if action == "fail":
        sys.exit(3)
    if action == "hang":
        time.sleep(600)
    print("finished", flush=True)
    """
)


@pytest.fixture
def fake_python(tmp_path):
    path = tmp_path / "fake_python"
    path.write_text(FAKE_TRAINER.format(python=sys.executable))
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def _run(fake_python, tmp_path, plan, num_workers=2, max_restarts=0):
    output = io.StringIO()
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    job = launch.LocalJob(
        num_workers,
        [f"--state={state}", f"--plan={json.dumps(plan)}"],
        max_restarts=max_restarts,
        output=output,
        python=fake_python,
        poll_seconds=0.05,
    )
    return job.run(), output.getvalue(), state


def _tf_config(state, attempt, index):
    with open(state / f"tf_config-{attempt}-{index}.json") as f:
        return json.load(f)


def test_every_worker_gets_its_tf_config_and_a_prefixed_log(fake_python, tmp_path):
    code, output, state = _run(fake_python, tmp_path, [["ok", "ok", "ok"]], num_workers=3)
    assert code == 0
    configs = [_tf_config(state, 0, index) for index in range(3)]
    hosts = configs[0]["cluster"]["worker"]
    assert len(set(hosts)) == 3 and all(host.startswith("127.0.0.1:") for host in hosts)
    assert configs == [{"cluster": {"worker": hosts}, "task": {"type": "worker", "index": i}} for i in range(3)]
    for index in range(3):
        assert f"[worker {index}] attempt 0 worker {index}: ok\n" in output
        assert f"[worker {index}] finished\n" in output
    assert output.rstrip().endswith("[launch] all 3 workers finished")


def test_a_failed_worker_restarts_all_of_them_on_new_ports(fake_python, tmp_path):
    # Attempt 0: worker 1 fails while worker 0 would wait for ever (as a survivor blocked in an all-reduce).
    code, output, state = _run(fake_python, tmp_path, [["hang", "fail"], ["ok", "ok"]], max_restarts=2)
    assert code == 0
    assert "[launch] worker 1 exited with code 3; stopping the others" in output
    assert "[launch] restarting all 2 workers (1 of 2 restarts)" in output
    assert "[worker 0] finished" in output and "[worker 1] finished" in output
    # Worker 0 of attempt 0 was killed, not waited for; every worker ran twice, no more.
    assert output.count("] finished") == 2
    assert [(state / f"attempts-{i}").read_text() for i in range(2)] == ["xx", "xx"]
    first, second = (_tf_config(state, attempt, 0)["cluster"]["worker"] for attempt in (0, 1))
    assert not set(first) & set(second)


def test_the_exit_code_is_the_failing_workers_once_restarts_are_spent(fake_python, tmp_path):
    code, output, _ = _run(fake_python, tmp_path, [["ok", "fail"]], max_restarts=1)
    assert code == 3
    assert output.count("exited with code 3") == 2
    assert output.rstrip().endswith("[launch] giving up after 1 restarts; exit code 3")


def test_a_stop_request_forwards_sigterm_and_restarts_nothing(fake_python, tmp_path):
    output = io.StringIO()
    state = tmp_path / "state"
    state.mkdir()
    job = launch.LocalJob(
        2,
        [f"--state={state}", f"--plan={json.dumps([['hang', 'hang']])}"],
        max_restarts=3,
        output=output,
        python=fake_python,
        poll_seconds=0.05,
    )
    job.request_stop()  # as the launcher's SIGTERM handler does; workers started afterwards are stopped at once
    assert job.run() == 128 + signal.SIGTERM
    assert "restarting" not in output.getvalue()


def test_exit_codes_of_signalled_workers_read_as_the_shell_reports_them():
    assert launch.exit_code(-signal.SIGKILL) == 137 and launch.exit_code(0) == 0 and launch.exit_code(2) == 2


def test_free_ports_are_distinct():
    ports = launch.free_ports(4)
    assert len(set(ports)) == 4 and all(0 < port < 65536 for port in ports)


@pytest.mark.parametrize(
    "num_workers, max_restarts, args, message",
    [
        (0, 0, [], "--workers: expected a positive integer, received 0"),
        (2, -1, [], "--max_restarts: expected an integer >= 0, received -1"),
        (2, 0, ["--task_index=0"], "trainer flag --task_index=0: expected no --worker_hosts/--task_index after `--`"),
    ],
)
def test_bad_launcher_arguments(num_workers, max_restarts, args, message):
    with pytest.raises(UserInputError, match=message.replace("(", r"\(")):
        launch.LocalJob(num_workers, args, max_restarts)


def test_the_script_hands_what_follows_the_separator_to_the_job():
    script = os.path.join(REPO_ROOT, "scripts", "launch_local.py")
    # The job refuses this trainer flag before starting anything, which shows the argv arrived.
    result = subprocess.run(
        [sys.executable, script, "--workers=1", "--", "--worker_hosts=a:1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "trainer flag --worker_hosts=a:1: expected no --worker_hosts/--task_index" in result.stderr
