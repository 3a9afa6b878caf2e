"""When checkpoints are written, where non-chief copies go, and what a restore brings back."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tests.helpers import REPO_ROOT
from trainer.cluster.tasks import TaskInfo
from trainer.common.errors import UserInputError
from trainer.storage import checkpoints
from trainer.storage.checkpoints import Checkpointer

CHIEF = TaskInfo(task_type=None, task_id=0, is_chief=True)


def _checkpointer(model_dir, task=CHIEF, every_steps=5):
    step = tf.Variable(0, dtype=tf.int64)
    weight = tf.Variable(tf.fill([256], 1.0))
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
    weight.assign(tf.fill([256], 42.0))
    checkpointer.save(force=True)
    restored, restored_step, restored_weight = _checkpointer(tmp_path)
    assert restored.restore_latest() == 7
    assert int(restored_step.numpy()) == 7 and float(restored_weight.numpy()[0]) == 42.0
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


def _corrupt(path_prefix: str) -> None:
    """Overwrites the middle of a checkpoint's data file, as a bad disk sector or a torn copy would."""
    (data_file,) = tf.io.gfile.glob(path_prefix + ".data-*")
    with open(data_file, "r+b") as f:
        size = os.path.getsize(data_file)
        f.seek(size // 2)
        f.write(b"\xff" * max(1, size // 4))


def test_an_unreadable_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    checkpointer, step, weight = _checkpointer(tmp_path)
    for new_step, value in ((5, 5.0), (10, 10.0)):
        step.assign(new_step)
        weight.assign(tf.fill([256], value))
        checkpointer.save()
    _corrupt(checkpointer.latest_checkpoint)
    restored, restored_step, restored_weight = _checkpointer(tmp_path)
    assert restored.restore_latest() == 5
    assert float(restored_weight.numpy()[0]) == 5.0
    assert any("ckpt-10 is unreadable" in record.getMessage() for record in caplog.records)


def test_every_checkpoint_unreadable_is_a_clear_error(tmp_path):
    checkpointer, step, _ = _checkpointer(tmp_path)
    step.assign(5)
    checkpointer.save()
    _corrupt(checkpointer.latest_checkpoint)
    restored, _, _ = _checkpointer(tmp_path)
    with pytest.raises(UserInputError, match="Every checkpoint in .* is unreadable"):
        restored.restore_latest()


def test_a_checkpoint_of_another_model_lists_the_mismatched_variables(tmp_path):
    checkpointer, step, _ = _checkpointer(tmp_path)
    step.assign(5)
    checkpointer.save()
    other_step = tf.Variable(0, dtype=tf.int64)
    other = tf.train.Checkpoint(global_step=other_step, weight=tf.Variable([1.0, 2.0]), bias=tf.Variable(0.0))
    restorer = Checkpointer(other, str(tmp_path), CHIEF, other_step, max_to_keep=10, every_steps=5)
    with pytest.raises(UserInputError) as error:
        restorer.restore_latest()
    message = str(error.value)
    assert "does not match the model" in message
    assert "shape differs: weight/.ATTRIBUTES/VARIABLE_VALUE model [2], checkpoint [256]" in message
    assert "missing from the checkpoint: bias/.ATTRIBUTES/VARIABLE_VALUE" in message


_DISK_FULL_SCRIPT = """
import resource, signal, sys
import tensorflow as tf
from trainer.storage.checkpoints import Checkpointer, CheckpointWriteError
from trainer.cluster.tasks import TaskInfo

step = tf.Variable(0, dtype=tf.int64)
weights = tf.Variable(tf.ones([64, 64]))
checkpointer = Checkpointer(tf.train.Checkpoint(global_step=step, weights=weights), sys.argv[1],
                            TaskInfo(None, 0, True), step, max_to_keep=1, every_steps=1)
step.assign(1)
checkpointer.save()
# From here on no file may grow past 1 KB, as on a full disk (writes fail with EFBIG instead of ENOSPC).
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1024, resource.RLIM_INFINITY))
step.assign(2)
weights.assign(tf.zeros([64, 64]))
try:
    checkpointer.save()
except CheckpointWriteError as error:
    print("WRITE ERROR:", error)
    sys.exit(3)
"""


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", _DISK_FULL_SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 3, result.stderr[-3000:]
    assert "Could not write the checkpoint of step 2" in result.stdout
    assert "ckpt-1 is intact" in result.stdout
    latest = tf.train.latest_checkpoint(os.path.join(str(tmp_path), "checkpoints"))
    assert latest.endswith("ckpt-1")
    reader = tf.train.load_checkpoint(latest)
    assert reader.get_tensor("global_step/.ATTRIBUTES/VARIABLE_VALUE") == 1
    assert (reader.get_tensor("weights/.ATTRIBUTES/VARIABLE_VALUE") == 1.0).all()
    assert not tf.io.gfile.glob(os.path.join(str(tmp_path), "checkpoints", "ckpt-2*"))


def _write(directory, step: int, state_file: bool = True) -> str:
    """A checkpoint whose variable holds its step; with `state_file`, recorded as the directory's latest."""
    checkpoint = tf.train.Checkpoint(global_step=tf.Variable(step, dtype=tf.int64))
    if state_file:
        return tf.train.CheckpointManager(checkpoint, str(directory), max_to_keep=None).save(checkpoint_number=step)
    return checkpoint.write(os.path.join(str(directory), f"ckpt-{step}"))


def test_resolve_checkpoint_accepts_a_prefix_or_a_directory(tmp_path):
    older, newer = _write(tmp_path / "run", 3), _write(tmp_path / "run", 5)
    assert checkpoints.resolve_checkpoint(older) == older
    assert checkpoints.resolve_checkpoint(str(tmp_path / "run")) == newer
    # A directory without a state file (a copy made by hand) holding exactly one checkpoint.
    copy = _write(tmp_path / "copy", 7, state_file=False)
    assert checkpoints.resolve_checkpoint(str(tmp_path / "copy")) == copy
    with pytest.raises(
        UserInputError, match=r"--checkpoint: expected a checkpoint prefix .*'.*nothing', which is neither"
    ):
        checkpoints.resolve_checkpoint(str(tmp_path / "nothing"))
    os.makedirs(tmp_path / "empty")
    with pytest.raises(UserInputError, match=r"init.checkpoint: expected a checkpoint in .*empty, received none"):
        checkpoints.resolve_checkpoint(str(tmp_path / "empty"), "init.checkpoint")


def test_latest_checkpoint_names_the_setting_and_the_remedy(tmp_path):
    _write(tmp_path / "run", 2)
    newest = _write(tmp_path / "run", 4)
    assert checkpoints.latest_checkpoint(str(tmp_path / "run"), "--mode=eval") == newest
    with pytest.raises(UserInputError, match=r"--mode=eval: expected a checkpoint in .*absent, received none\. Train"):
        checkpoints.latest_checkpoint(str(tmp_path / "absent"), "--mode=eval", "Train first.")


def test_checkpoint_step_reads_the_suffix():
    assert checkpoints.checkpoint_step("/runs/a/checkpoints/ckpt-1200") == 1200
    assert checkpoints.checkpoint_step("gs://bucket/run-3/best/ckpt-0") == 0
    assert checkpoints.checkpoint_step("/runs/a/checkpoints/final") is None
    assert checkpoints.checkpoint_step("/runs/a/ckpt-12/model") is None


def test_copy_checkpoint_copies_only_the_checkpoints_own_files(tmp_path):
    source = _write(tmp_path / "run", 4)
    (tmp_path / "run" / "ckpt-4.index.tmp-123").write_text("a leftover")
    copy = checkpoints.copy_checkpoint(source, str(tmp_path / "best"))
    assert copy == str(tmp_path / "best" / "ckpt-4")
    assert sorted(os.listdir(tmp_path / "best")) == ["ckpt-4.data-00000-of-00001", "ckpt-4.index"]
    assert checkpoints.checkpoint_files(copy) == [f"{copy}.data-00000-of-00001", f"{copy}.index"]
    assert tf.train.load_checkpoint(copy).get_tensor(checkpoints.STEP_KEY) == 4
    with pytest.raises(tf.errors.NotFoundError):
        checkpoints.copy_checkpoint(str(tmp_path / "run" / "ckpt-9"), str(tmp_path / "best"))


def _dense_model(units: int, seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.layers.Dense(units, name="head")])
    model(tf.zeros([1, 3]))
    return model


def test_restore_model_weights_returns_the_step_and_lists_a_mismatch(tmp_path):
    source = _dense_model(4, seed=1)
    step = tf.Variable(11, dtype=tf.int64)
    optimizer_slot = tf.Variable(tf.ones([4]))
    training = tf.train.Checkpoint(model=source, global_step=step, optimizer=tf.train.Checkpoint(slot=optimizer_slot))
    prefix = training.write(str(tmp_path / "ckpt-9"))
    target = _dense_model(4, seed=2)
    assert checkpoints.restore_model_weights(target, prefix, "--checkpoint") == 11  # the saved step, not the name's
    for restored, saved in zip(target.get_weights(), source.get_weights(), strict=True):
        np.testing.assert_array_equal(restored, saved)

    without_step = tf.train.Checkpoint(model=source).write(str(tmp_path / "ckpt-5"))
    assert checkpoints.restore_model_weights(target, without_step, "--checkpoint") == 5
    assert (
        checkpoints.restore_model_weights(target, tf.train.Checkpoint(model=source).write(str(tmp_path / "w")), "x")
        is None
    )

    with pytest.raises(UserInputError) as error:
        checkpoints.restore_model_weights(_dense_model(6, seed=3), prefix, "--checkpoint", remedy="Use the right one.")
    message = str(error.value)
    assert message.startswith(f"--checkpoint: checkpoint {prefix} does not match the model being built")
    assert "shape differs: model/layer_with_weights-0/kernel/.ATTRIBUTES/VARIABLE_VALUE model [3, 6]" in message
    # A weights-only restore leaves the step and the optimizer behind on purpose: they are not mismatches.
    assert "global_step" not in message and "optimizer" not in message
    assert message.endswith("Use the right one.")
