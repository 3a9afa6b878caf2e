"""The command line in a child process: the smoke config end to end, and clear errors for bad input."""

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO_ROOT, SMOKE_GIN

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]


def _run_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(
        [sys.executable, "-m", "trainer", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_smoke_config_runs_end_to_end(tmp_path):
    model_dir = tmp_path / "run"
    result = _run_cli(
        f"--gin_file={SMOKE_GIN}",
        f"--gin_bindings=synthetic_shapes.data_dir='{tmp_path / 'data'}'",
        f"--model_dir={model_dir}",
        "--mode=train_and_eval",
        "--strategy=one_device",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with open(model_dir / "eval" / "metrics_step_00000006.json") as f:
        assert 0.0 <= json.load(f)["miou"] <= 1.0
    assert (model_dir / "operative_config.gin").exists()
    assert (model_dir / "checkpoints" / "ckpt-6.index").exists()


def test_misspelled_gin_binding_is_a_clear_error(tmp_path):
    result = _run_cli(f"--gin_file={SMOKE_GIN}", "--gin_param=train.stepz=3", f"--model_dir={tmp_path}")
    assert result.returncode != 0
    assert "Configurable 'train' doesn't have a parameter named 'stepz'. Did you mean 'steps'?" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_mode_is_a_clear_error(tmp_path):
    result = _run_cli(f"--gin_file={SMOKE_GIN}", "--mode=fit", f"--model_dir={tmp_path}")
    assert result.returncode != 0
    assert "--mode=fit" in result.stderr and "train_and_eval" in result.stderr
    assert "Traceback" not in result.stderr


def test_tpu_strategy_without_a_tpu_is_a_one_line_error(tmp_path):
    result = _run_cli(f"--gin_file={SMOKE_GIN}", "--strategy=tpu", "--tpu=local", f"--model_dir={tmp_path}")
    assert result.returncode != 0
    assert "no TPU could be reached" in result.stderr
    assert "Traceback" not in result.stderr
