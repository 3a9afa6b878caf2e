"""`run()` with a NaN injected at one training step: it raises naming the step, or recovers from the last checkpoint."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tests.helpers import one_device_strategy, parse_smoke_config, scalar_events
from trainer import train_lib
from trainer.models import DeepLabV3Plus

pytestmark = [pytest.mark.usefixtures("clear_gin"), pytest.mark.slow]

NAN_AT_TRAINING_CALL = 4  # the 4th training forward pass, i.e. global step 4


@dataclasses.dataclass(frozen=True)
class _Counter:
    """Holds the call counter outside the model's tracked state, so restoring a checkpoint does not rewind it."""

    calls: tf.Variable


class NaNOnce(keras.Model):
    """The configured DeepLabV3+ whose logits are NaN on exactly one training call (a bad batch, seen once)."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.inner = DeepLabV3Plus(num_classes=num_classes)
        self.counter = _Counter(tf.Variable(0, trainable=False))

    def call(self, images, training=None):
        logits = self.inner(images, training=training)
        if not training:
            return logits
        calls = self.counter.calls.assign_add(1)
        return tf.where(tf.equal(calls, NAN_AT_TRAINING_CALL), np.nan, logits)


def test_nan_raises_and_names_the_step(tmp_path):
    parse_smoke_config(str(tmp_path / "data"), "train.steps_per_loop = 3")
    with pytest.raises(FloatingPointError, match=r"NaN or Inf at step 4 \(host loop over steps 4-4"):
        train_lib.run("train", str(tmp_path / "run"), strategy=one_device_strategy(), model=NaNOnce)
    # The bad state was never saved: the last checkpoint is the one of step 3.
    assert tf.train.latest_checkpoint(str(tmp_path / "run" / "checkpoints")).endswith("ckpt-3")


def test_recovery_restores_the_last_checkpoint_and_finishes(tmp_path, caplog):
    parse_smoke_config(
        str(tmp_path / "data"),
        "train.steps_per_loop = 3",
        "train.checkpoint_every_steps = 2",
        "train.nan_recovery_attempts = 1",
    )
    model_dir = tmp_path / "run"
    train_lib.run("train", str(model_dir), strategy=one_device_strategy(), model=NaNOnce)
    assert "NaN or Inf at step 4" in caplog.text
    assert "Restored the checkpoint of step 3" in caplog.text and "recovery 1 of 1" in caplog.text
    assert tf.train.latest_checkpoint(str(model_dir / "checkpoints")).endswith("ckpt-6")
    events = scalar_events(str(model_dir / "train"))
    # Loop ends: 3 (saved: it crossed a multiple of 2); the NaN at step 4 (not logged) sends it back to step 3;
    # the next loop runs steps 4-6 on the batches after the bad one.
    assert [step for step, _ in events["loss"]] == [3, 6]
    assert all(np.isfinite(value) for _, value in events["loss"])
    # Every float scalar of the loop is a tag.
    for tag in ("cross_entropy", "l2_regularization", "gradient_norm", "weight_norm", "learning_rate"):
        assert [step for step, _ in events[tag]] == [3, 6], tag
    assert not any(tag in events for tag in ("all_finite", "nonfinite_step", "steps"))
