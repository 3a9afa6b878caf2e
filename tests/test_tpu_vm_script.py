"""scripts/tpu_vm.sh prints the gcloud commands of a TPU VM run, and with --run runs exactly those."""

import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
import tarfile

import pytest

from tests.helpers import REPO_ROOT

SCRIPT = os.path.join(REPO_ROOT, "scripts", "tpu_vm.sh")


def _script(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", SCRIPT, *args], capture_output=True, text=True, timeout=60, env=env or dict(os.environ)
    )


def _commands(stdout: str) -> list[list[str]]:
    lines = [line for line in stdout.splitlines() if line and not line.startswith("#")]
    return [shlex.split(line) for line in lines]


def test_prints_create_install_and_launch_commands():
    result = _script("--bucket=gs://my-bucket/", "--project=my-project", "--name=t1")
    assert result.returncode == 0, result.stderr
    commands = _commands(result.stdout)
    assert [c[:5] for c in commands if c[0] == "gcloud"] == [
        ["gcloud", "compute", "tpus", "tpu-vm", "create"],
        ["gcloud", "compute", "tpus", "tpu-vm", "scp"],
        ["gcloud", "compute", "tpus", "tpu-vm", "ssh"],
        ["gcloud", "compute", "tpus", "tpu-vm", "ssh"],
        ["gcloud", "compute", "tpus", "tpu-vm", "ssh"],
    ]
    create = commands[0]
    assert create[5:] == [
        "t1",
        "--zone=us-central2-b",
        "--project=my-project",
        "--accelerator-type=v4-8",
        "--version=tpu-vm-tf-2.21.0-pjrt",
    ]
    # The remote training command, as the VM's shell will split it.
    remote = shlex.split(commands[-1][-1].removeprefix("--command="))
    assert remote[remote.index("-m") + 1] == "trainer"
    for flag in (
        "--gin_file=configs/cloud_tpu.gin",
        "--strategy=tpu",
        "--tpu=local",
        "--model_dir=gs://my-bucket/runs/cloud_tpu",
        "--gin_bindings=tfrecord_dataset.train_pattern='gs://my-bucket/pascal_voc_seg/tfrecord/train_aug-*'",
        "--gin_bindings=tfrecord_dataset.eval_pattern='gs://my-bucket/pascal_voc_seg/tfrecord/val-*'",
    ):
        assert flag in remote
    assert "gcloud compute tpus tpu-vm delete t1 --zone=us-central2-b --project=my-project --quiet" in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        ((), "error: --bucket: expected a gs:// bucket (e.g. --bucket=gs://my-bucket), received ''."),
        (("--bucket=/data",), "received '/data'"),
        (("--bucket=gs://b", "--config=configs/nope.gin"), "error: --config: expected a gin file of this checkout"),
        (("--bucket=gs://b", "--zonee=x"), "error: unknown argument --zonee=x"),
    ],
)
def test_bad_arguments(args, message):
    result = _script(*args)
    assert result.returncode == 2 and message in result.stderr


def test_run_executes_the_printed_commands_in_order(tmp_path):
    log = tmp_path / "gcloud.log"
    fake = tmp_path / "bin" / "gcloud"
    fake.parent.mkdir()
    fake.write_text(
        f"#!{sys.executable}\nimport sys, json\nopen({str(log)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = dict(os.environ, PATH=f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    result = _script("--bucket=gs://b", "--name=t2", "--run", env=env)
    assert result.returncode == 0, result.stderr
    printed = [c[1:] for c in _commands(result.stdout) if c[0] == "gcloud"]
    ran = [json.loads(line) for line in log.read_text().splitlines()]
    assert ran == printed and len(ran) == 5
    # The archive the VM receives holds the committed package and configs.
    with tarfile.open("/tmp/deeplab-trainer-t2.tar.gz") as archive:
        names = archive.getnames()
    assert "trainer/cli.py" in names and "configs/pascal_voc_resnet101_os16.gin" in names
    os.remove("/tmp/deeplab-trainer-t2.tar.gz")


def test_run_without_gcloud_is_a_clear_error(tmp_path):
    # A PATH with the tools the script uses, but no gcloud.
    for tool in ("dirname", "basename"):
        os.symlink(shutil.which(tool), tmp_path / tool)
    env = dict(os.environ, PATH=str(tmp_path))
    result = subprocess.run(
        ["/bin/bash", SCRIPT, "--bucket=gs://b", "--run"], capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode == 2 and "error: --run needs the gcloud CLI" in result.stderr
