"""The run manifest names the strategy and replicas, the software and the machine, and is written atomically."""

import json
import os

import pytest
import tensorflow as tf

from tests.helpers import mirrored_strategy, one_device_strategy, text_tags
from trainer.cluster.tasks import TaskInfo, task_info
from trainer.observe import manifest


def test_manifest_names_the_strategy_replicas_devices_and_software(tmp_path):
    strategy = mirrored_strategy()
    record = manifest.build_manifest("train", str(tmp_path), strategy, task_info(strategy), step=0)
    assert record["strategy"]["name"] == "mirrored"
    assert record["strategy"]["class"] == "MirroredStrategy"
    assert record["strategy"]["num_replicas_in_sync"] == 2
    assert len(record["strategy"]["local_replica_devices"]) == 2
    assert record["strategy"]["num_workers"] == 1 and record["strategy"]["task"]["is_chief"]
    assert {device["type"] for device in record["devices"]} >= {"CPU"}
    assert record["packages"]["tensorflow"] == tf.__version__
    assert record["tensorflow_build"] == json.loads(json.dumps(record["tensorflow_build"]))
    assert "is_cuda_build" in record["tensorflow_build"]
    assert record["hostname"] and record["process_start_time"] <= record["written_at"]
    # The tests run from the project's git checkout.
    assert len(record["git"]["commit"]) == 40


def test_chief_writes_json_and_a_text_summary_atomically(tmp_path):
    strategy = one_device_strategy()
    task = task_info(strategy)
    writer = tf.summary.create_file_writer(str(tmp_path / "train"))
    record = manifest.write_run_manifest("train_and_eval", str(tmp_path), strategy, task, writer, step=7)
    writer.close()
    with open(tmp_path / "manifest.json") as f:
        saved = json.load(f)
    assert saved["strategy"]["name"] == "one_device" and saved["strategy"]["class"] == "OneDeviceStrategy"
    assert saved["strategy"]["num_replicas_in_sync"] == 1
    assert saved["start_step"] == 7 and saved["mode"] == "train_and_eval"
    assert saved["git"] == record["git"]
    assert sorted(os.listdir(tmp_path)) == ["manifest.json", "train"]  # no temporary file left behind
    assert "manifest" in text_tags(str(tmp_path / "train"))


def test_other_tasks_write_nothing(tmp_path):
    strategy = one_device_strategy()
    worker = TaskInfo(task_type="worker", task_id=1, is_chief=False)
    record = manifest.write_run_manifest("train", str(tmp_path), strategy, worker, tf.summary.create_noop_writer(), 0)
    assert record["strategy"]["task"] == {"type": "worker", "id": 1, "is_chief": False}
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "mode,filename",
    [("train", "manifest.json"), ("train_and_eval", "manifest.json"), ("eval", "manifest_eval.json")],
)
def test_an_evaluator_does_not_overwrite_the_trainers_manifest(mode, filename):
    assert manifest.manifest_filename(mode) == filename


def test_git_state_is_none_outside_a_checkout(tmp_path):
    assert manifest.git_state(str(tmp_path)) is None
