"""continuous_eval beside a training job: a child process trains while this one evaluates each checkpoint once."""

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO_ROOT, one_device_strategy, parse_smoke_config, scalar_events
from trainer import train_lib

pytestmark = [pytest.mark.usefixtures("clear_gin"), pytest.mark.slow, pytest.mark.subprocess]

EVALUATOR_BINDINGS = ("evaluation.continuous_timeout_secs = 240", "evaluation.best_metric = 'pixel_accuracy'")

# The trainer: 3 steps (ckpt-3), then it waits until ckpt-3 has been evaluated before resuming to step 6 (ckpt-6),
# so the evaluator provably picks up a checkpoint written while both run, and sees every checkpoint.
_TRAINER = """
import os, sys, time
from tests.helpers import parse_smoke_config
from trainer import train_lib

data_dir, model_dir = sys.argv[1:]
parse_smoke_config(data_dir, "train.steps = 3")
train_lib.run("train", model_dir, strategy="one_device")
report = os.path.join(model_dir, "eval", "metrics_step_00000003.json")
deadline = time.time() + 240
while not os.path.exists(report):
    if time.time() > deadline:
        sys.exit("ckpt-3 was never evaluated")
    time.sleep(0.2)
parse_smoke_config(data_dir, "train.steps = 6")
train_lib.run("train", model_dir, strategy="one_device")
"""


def test_continuous_eval_evaluates_each_checkpoint_once_and_stops_after_the_last(tmp_path):
    data_dir = str(tmp_path / "data")
    model_dir = tmp_path / "run"
    trainer = subprocess.Popen(
        [sys.executable, "-c", _TRAINER, data_dir, str(model_dir)],
        cwd=REPO_ROOT,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        parse_smoke_config(data_dir, *EVALUATOR_BINDINGS)
        final = train_lib.run("continuous_eval", str(model_dir), strategy=one_device_strategy())
        output = trainer.communicate(timeout=240)[0]
    finally:
        trainer.kill()
    assert trainer.returncode == 0, output[-3000:]
    assert final["step"] == 6

    reports = {}
    for step in (3, 6):
        with open(model_dir / "eval" / f"metrics_step_{step:08d}.json") as f:
            reports[step] = json.load(f)
        assert reports[step]["checkpoint"] == str(model_dir / "checkpoints" / f"ckpt-{step}")
    assert sorted(p.name for p in (model_dir / "eval").glob("*.json")) == [
        "metrics_step_00000003.json",
        "metrics_step_00000006.json",
    ]
    events = scalar_events(str(model_dir / "eval"))
    assert [step for step, _ in events["pixel_accuracy"]] == [3, 6]  # each checkpoint evaluated once

    # best/ holds the checkpoint with the highest pixel accuracy (the earlier one on a tie).
    with open(model_dir / "best" / "info.json") as f:
        info = json.load(f)
    best_step = max((3, 6), key=lambda s: reports[s]["pixel_accuracy"])
    assert info["metric"] == "pixel_accuracy" and info["step"] == best_step
    assert info["value"] == reports[best_step]["pixel_accuracy"]
    assert sorted(os.listdir(model_dir / "best")) == sorted(
        ["checkpoint", "info.json", f"ckpt-{best_step}.index", f"ckpt-{best_step}.data-00000-of-00001"]
    )

    # Beside the training job the evaluator wrote only eval/ and best/: every other file is the trainer's.
    assert {p.name for p in model_dir.iterdir()} == {
        "checkpoints",
        "train",
        "eval",
        "best",
        "operative_config.gin",
        "manifest.json",
    }
    assert all(f".{trainer.pid}." in p.name for p in (model_dir / "train").iterdir())
    assert all(f".{os.getpid()}." in p.name for p in (model_dir / "eval").glob("events.*"))

    # A restarted evaluator finds both reports and exits at once without evaluating again.
    parse_smoke_config(data_dir, *EVALUATOR_BINDINGS)
    again = train_lib.run("continuous_eval", str(model_dir), strategy=one_device_strategy())
    assert again["step"] == 6 and again["pixel_accuracy"] == final["pixel_accuracy"]
    assert [step for step, _ in scalar_events(str(model_dir / "eval"))["pixel_accuracy"]] == [3, 6]
