"""Preemption inside a host loop: the stop flag ends the loop after the step in progress; SIGTERM sets it at once."""

import os
import signal
import threading

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tests.helpers import one_device_strategy, tiny_deeplab
from trainer.cluster.preemption import (
    EXIT_CODE_PREEMPTED,
    Preempted,
    PreemptionConfig,
    PreemptionWatcher,
    new_stop_flag,
)
from trainer.common.errors import UserInputError
from trainer.core.losses import SegmentationLoss
from trainer.core.train_step import StepOptions
from trainer.core.trainer import Trainer, new_global_step

_SIZE = 32


def _trainer(stop_flag):
    strategy = one_device_strategy()
    with strategy.scope():
        model = tiny_deeplab()
        model.build((None, _SIZE, _SIZE, 3))
        optimizer = keras.optimizers.SGD(0.01)
        global_step = new_global_step()
    options = StepOptions(255, 0.0, False, 1)
    trainer = Trainer(strategy, model, optimizer, SegmentationLoss(), global_step, options, stop_flag=stop_flag)
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(2, _SIZE, _SIZE, 3)).astype(np.float32)
    labels = rng.integers(0, 3, size=(2, _SIZE, _SIZE)).astype(np.int32)
    batches = iter(strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors((images, labels)).repeat()))
    return trainer, batches


def test_a_set_stop_flag_ends_the_loop_after_one_step_and_an_unset_one_changes_nothing():
    stop_flag = new_stop_flag()
    trainer, batches = _trainer(stop_flag)
    outputs = trainer.loop(batches, tf.constant(3))
    assert int(outputs["steps"]) == 3 and not bool(outputs["stopped"])
    stop_flag.assign(True)
    outputs = trainer.loop(batches, tf.constant(500))
    assert int(outputs["steps"]) == 1 and bool(outputs["stopped"])
    assert trainer.step == 4


def test_sigterm_during_a_500_step_loop_stops_it_within_a_few_steps_and_saves_that_step():
    stop_flag = new_stop_flag()
    trainer, batches = _trainer(stop_flag)
    trainer.loop(batches, tf.constant(1))  # traced and compiled before the signal
    saved = []
    config = PreemptionConfig(grace_seconds=5, exit_code=99)
    watcher = PreemptionWatcher(
        trainer.strategy, lambda: saved.append(trainer.step), lambda: trainer.step, stop_flag, config
    )
    signalled_at = []

    def preempt():
        signalled_at.append(trainer.step)
        os.kill(os.getpid(), signal.SIGTERM)

    timer = threading.Timer(1.0, preempt)
    try:
        timer.start()
        outputs = trainer.loop(batches, tf.constant(500))
        assert bool(outputs["stopped"])
        with pytest.raises(Preempted, match="exit code 99") as raised:
            watcher.check(stopped=True)
    finally:
        timer.cancel()
        watcher.close()
    assert 1 <= int(outputs["steps"]) < 499
    assert signalled_at[0] <= raised.value.step <= signalled_at[0] + 3
    assert saved == [raised.value.step] and raised.value.exit_code == 99
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


@pytest.mark.parametrize("binding", [{"exit_code": 1}, {"exit_code": 256}, {"grace_seconds": 0}])
def test_bad_preemption_settings_are_user_errors(binding):
    with pytest.raises(UserInputError, match="gin binding preemption"):
        PreemptionConfig(**binding)


def test_the_default_exit_code_is_one_every_scheduler_in_deploy_retries():
    assert PreemptionConfig().exit_code == EXIT_CODE_PREEMPTED == 143
    for manifest in ("kubernetes/indexed-job.yaml", "kubernetes/tfjob.yaml", "slurm/train.sbatch"):
        with open(os.path.join(os.path.dirname(__file__), "..", "deploy", manifest)) as f:
            assert "143" in f.read(), manifest
