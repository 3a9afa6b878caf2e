"""Early stopping: the expected evaluation stops training, with the reason in the eval JSON; resume replays it."""

import glob
import json
import os

import pytest

from tests.helpers import one_device_strategy, parse_smoke_config
from trainer import train_lib
from trainer.common.errors import UserInputError
from trainer.core.config import EvalConfig
from trainer.core.early_stopping import EarlyStopping


def _report(step, value):
    return {"step": step, "miou": value}


def test_stops_after_patience_evaluations_without_an_improvement_above_min_delta():
    stopping = EarlyStopping("miou", patience=2, min_delta=0.01)
    decisions = [stopping.observe(_report(s, v)) for s, v in [(1, 0.5), (2, 0.6), (3, 0.605), (4, 0.59)]]
    assert [d["stop"] for d in decisions] == [False, False, False, True]
    assert decisions[-1]["best_step"] == 2 and decisions[-1]["evaluations_without_improvement"] == 2
    assert "has not improved on 0.6 (step 2) by more than 0.01 for 2 evaluations" in decisions[-1]["reason"]


def test_an_improvement_resets_the_count_and_nan_never_improves():
    stopping = EarlyStopping("miou", patience=2, min_delta=0.0)
    values = [0.5, float("nan"), 0.7, 0.7, 0.71, float("nan"), 0.2]
    stops = [stopping.observe(_report(s, v))["stop"] for s, v in enumerate(values, start=1)]
    assert stops == [False, False, False, False, False, False, True]


def test_settings_are_validated():
    with pytest.raises(UserInputError, match="evaluation.early_stopping_patience"):
        EvalConfig(early_stopping_patience=-1)
    with pytest.raises(UserInputError, match="evaluation.best_metric"):
        EvalConfig(best_metric="f2")


@pytest.mark.usefixtures("clear_gin")
@pytest.mark.slow  # two short smoke runs: about 15 s
def test_train_and_eval_stops_at_the_expected_evaluation_and_a_resume_stays_stopped(tmp_path):
    data_dir, model_dir = str(tmp_path / "data"), str(tmp_path / "run")
    # min_delta 1: no evaluation after the first can improve, so the second one (step 2) stops.
    bindings = ("train.steps = 8", "train.steps_per_loop = 1", "train.checkpoint_every_steps = 1")
    bindings += ("evaluation.every_steps = 1", "evaluation.early_stopping_patience = 1")
    parse_smoke_config(data_dir, *bindings, "evaluation.early_stopping_min_delta = 1.0")
    report = train_lib.run("train_and_eval", model_dir, strategy=one_device_strategy())
    assert report["step"] == 2 and report["early_stopping"]["stop"] and report["early_stopping"]["best_step"] == 1
    paths = sorted(glob.glob(os.path.join(model_dir, "eval", "metrics_step_*.json")))
    assert [os.path.basename(p) for p in paths] == ["metrics_step_00000001.json", "metrics_step_00000002.json"]
    with open(paths[-1]) as f:
        assert "evaluation.early_stopping_patience = 1" in json.load(f)["early_stopping"]["reason"]
    with open(os.path.join(model_dir, "best", "info.json")) as f:
        assert json.load(f)["step"] in (1, 2)
    parse_smoke_config(data_dir, *bindings, "evaluation.early_stopping_min_delta = 1.0")
    again = train_lib.run("train_and_eval", model_dir, strategy=one_device_strategy())
    assert again["step"] == 2 and again["early_stopping"]["stop"]
