"""When checkpoints are written, where non-chief copies go, and what a restore brings back."""

import os

import tensorflow as tf

from trainer.checkpoints import Checkpointer
from trainer.distribute import TaskInfo

CHIEF = TaskInfo(task_type=None, task_id=0, is_chief=True)


def _checkpointer(model_dir, task=CHIEF, every_steps=5):
    step = tf.Variable(0, dtype=tf.int64)
    weight = tf.Variable(1.0)
    checkpoint = tf.train.Checkpoint(global_step=step, weight=weight)
    return Checkpointer(checkpoint, str(model_dir), task, step, max_to_keep=10, every_steps=every_steps), step, weight


def test_saves_when_a_multiple_of_every_steps_is_crossed_or_when_forced(tmp_path):
    checkpointer, step, _ = _checkpointer(tmp_path)
    saved = []
    for new_step, force in ((3, False), (6, False), (8, False), (10, False), (12, True), (12, True)):
        step.assign(new_step)
        if checkpointer.save(force=force):
            saved.append(new_step)
    assert saved == [6, 10, 12]
    assert checkpointer.latest_checkpoint.endswith("ckpt-12")


def test_restore_brings_back_values_and_step(tmp_path):
    checkpointer, step, weight = _checkpointer(tmp_path)
    step.assign(7)
    weight.assign(42.0)
    checkpointer.save(force=True)
    restored, restored_step, restored_weight = _checkpointer(tmp_path)
    assert restored.restore_latest() == 7
    assert int(restored_step.numpy()) == 7 and float(restored_weight.numpy()) == 42.0
    # A restored run does not save the same step again.
    assert restored.save(force=True) is None


def test_non_chief_writes_to_a_temporary_directory_and_removes_it(tmp_path):
    worker = TaskInfo(task_type="worker", task_id=1, is_chief=False)
    checkpointer, step, _ = _checkpointer(tmp_path, task=worker)
    for new_step in (5, 10):
        step.assign(new_step)
        assert checkpointer.save() is None
    assert os.listdir(tmp_path) == []
    assert checkpointer.latest_checkpoint is None
