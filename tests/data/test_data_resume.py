"""A resumed run trains on exactly the batches of an uninterrupted one (train_lib passes start_step)."""

import glob
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import one_device_strategy, parse_smoke_config
from trainer import train_lib

pytestmark = [pytest.mark.usefixtures("clear_gin"), pytest.mark.slow]

# Dropout draws from the global random state, which a resumed run re-seeds rather than restores: without it,
# the batches are the only thing that could make the two runs differ.
NO_DROPOUT = ("DeepLabV3Plus.aspp_dropout_rate = 0.0",)


def _weights(model_dir: str) -> dict[str, np.ndarray]:
    reader = tf.train.load_checkpoint(os.path.join(model_dir, "checkpoints"))
    return {
        name: reader.get_tensor(name)
        for name in reader.get_variable_to_shape_map()
        if name.startswith("model/") and name.endswith("VARIABLE_VALUE")
    }


def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_run(tmp_path):
    data_dir = str(tmp_path / "data")
    # 32 examples, batch 4: 8 steps per epoch; resuming at step 3 lands mid-epoch.
    bindings = ("train.steps = 6", "train.checkpoint_every_steps = 3", *NO_DROPOUT)
    parse_smoke_config(data_dir, *bindings)
    straight = str(tmp_path / "straight")
    train_lib.run("train", straight, strategy=one_device_strategy())

    # A run that stopped after step 3: the same directory without the step-6 checkpoint.
    resumed = str(tmp_path / "resumed")
    shutil.copytree(straight, resumed)
    checkpoints = os.path.join(resumed, "checkpoints")
    for path in glob.glob(os.path.join(checkpoints, "ckpt-6*")):
        os.remove(path)
    tf.compat.v1.train.update_checkpoint_state(checkpoints, os.path.join(checkpoints, "ckpt-3"))
    parse_smoke_config(data_dir, *bindings)
    train_lib.run("train", resumed, strategy=one_device_strategy())

    expected, actual = _weights(straight), _weights(resumed)
    assert expected.keys() == actual.keys() and len(expected) > 10
    for name in expected:
        np.testing.assert_array_equal(actual[name], expected[name], err_msg=name)
