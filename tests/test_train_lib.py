"""`run()` end to end in-process on the smoke config: resume, TensorBoard tags, eval outputs."""

import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import one_device_strategy, parse_smoke_config, scalar_events, text_tags
from trainer import train_lib
from trainer.common.errors import UserInputError

pytestmark = [pytest.mark.usefixtures("clear_gin"), pytest.mark.slow]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data"))


def _one_device():
    return one_device_strategy()


def test_train_and_eval_writes_tensorboard_tags_json_and_operative_config(data_dir, tmp_path):
    parse_smoke_config(data_dir)
    model_dir = str(tmp_path / "run")
    report = train_lib.run("train_and_eval", model_dir, strategy=_one_device())

    train_events = scalar_events(os.path.join(model_dir, "train"))
    for tag in ("loss", "learning_rate", "steps_per_sec", "examples_per_sec"):
        assert [step for step, _ in train_events[tag]] == [3, 6], tag
    assert all(np.isfinite(value) for _, value in train_events["loss"])
    assert "operative_config" in text_tags(os.path.join(model_dir, "train"))

    eval_events = scalar_events(os.path.join(model_dir, "eval"))
    assert [step for step, _ in eval_events["miou"]] == [3, 6]
    assert "pixel_accuracy" in eval_events
    assert any(tag.startswith("iou/") for tag in eval_events)
    np.testing.assert_allclose(eval_events["miou"][-1][1], report["miou"], rtol=1e-6)

    with open(os.path.join(model_dir, "eval", "metrics_step_00000006.json")) as f:
        saved = json.load(f)
    assert saved["step"] == 6 and 0.0 <= saved["miou"] <= 1.0
    assert set(saved["per_class_iou"]) == {"background", "disk", "square", "triangle", "cross"}
    with open(os.path.join(model_dir, "operative_config.gin")) as f:
        operative = f.read()
    assert "train.steps = 6" in operative and "ResNet.base_filters = 4" in operative


def test_second_run_resumes_at_the_saved_step(data_dir, tmp_path):
    model_dir = str(tmp_path / "run")
    parse_smoke_config(data_dir, "train.steps = 3")
    train_lib.run("train", model_dir, strategy=_one_device())
    assert tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints")).endswith("ckpt-3")

    parse_smoke_config(data_dir, "train.steps = 6")
    train_lib.run("train", model_dir, strategy=_one_device())
    assert tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints")).endswith("ckpt-6")
    # Resumed runs continue the step count: each loop end (3, then 6) is logged once, never repeated.
    steps = sorted(step for step, _ in scalar_events(os.path.join(model_dir, "train"))["loss"])
    assert steps == [3, 6]
    reader = tf.train.load_checkpoint(os.path.join(model_dir, "checkpoints"))
    assert reader.get_tensor("global_step/.ATTRIBUTES/VARIABLE_VALUE") == 6
    assert reader.get_tensor("optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE") == 6


def test_eval_mode_needs_a_checkpoint(data_dir, tmp_path):
    parse_smoke_config(data_dir)
    with pytest.raises(UserInputError, match=r"--mode=eval: expected a checkpoint in .*, received none"):
        train_lib.run("eval", str(tmp_path / "empty"), strategy=_one_device())


def test_eval_mode_reproduces_the_final_train_and_eval_metrics(data_dir, tmp_path):
    parse_smoke_config(data_dir)
    model_dir = str(tmp_path / "run")
    final = train_lib.run("train_and_eval", model_dir, strategy=_one_device())
    parse_smoke_config(data_dir)
    again = train_lib.run("eval", model_dir, strategy=_one_device())
    assert again["step"] == final["step"] == 6
    assert again["miou"] == final["miou"]
    assert len(glob.glob(os.path.join(model_dir, "eval", "metrics_step_*.json"))) == 2
