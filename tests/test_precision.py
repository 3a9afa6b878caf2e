"""Precision policies: the policy reaches the layers built under it; float16 trains with a loss scale; all under XLA."""

import os

import gin
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tests.helpers import (
    make_train_loop,
    one_device_strategy,
    parse_smoke_config,
    scalar_events,
    smoke_run_state,
    tiny_deeplab,
)
from trainer.common.errors import UserInputError
from trainer.core import optim, precision
from trainer.core.config import TrainConfig


@pytest.fixture(autouse=True)
def _clear_gin():
    gin.clear_config()
    yield
    gin.clear_config()
    assert keras.mixed_precision.global_policy().name == "float32"


def test_unknown_precision_names_the_binding():
    with pytest.raises(
        UserInputError, match=r"train.precision: expected one of \{float32, mixed_float16, mixed_bfloat16"
    ):
        precision.parse("bfloat16")


def test_policy_scope_reaches_the_layers_built_inside_and_is_restored():
    with precision.policy_scope("mixed_bfloat16"):
        model = tiny_deeplab(3)
    model(tf.zeros([1, 32, 32, 3]))
    assert keras.mixed_precision.global_policy().name == "float32"
    assert model.backbone.compute_dtype == "bfloat16"
    assert {v.dtype for v in model.variables} == {tf.float32}
    assert model(tf.zeros([1, 32, 32, 3])).dtype == tf.float32  # logits stay float32 for the loss


@pytest.mark.slow
def test_mixed_float16_trains_with_a_dynamic_loss_scale_and_skips_overflowing_steps():
    strategy = one_device_strategy()
    keras.utils.set_random_seed(0)
    with strategy.scope():
        with precision.policy_scope("mixed_float16"):
            model = tiny_deeplab(3)
            model(tf.zeros([1, 32, 32, 3]))
        # A start scale of 2**40 overflows float16 gradients on purpose: the optimizer must skip those updates and
        # halve the scale until the gradients fit, without the NaN guard firing (the loss itself stays finite).
        optimizer = keras.mixed_precision.LossScaleOptimizer(
            optim.build_optimizer(optim.OptimizerConfig(learning_rate=0.01), total_steps=40), initial_scale=2**40
        )
        global_step = tf.Variable(0, dtype=tf.int64)
    assert model.backbone.compute_dtype == "float16" and precision.uses_loss_scaling(optimizer)
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, size=(4, 32, 32, 3)).astype(np.float32)
    labels = rng.integers(0, 3, size=(4, 32, 32)).astype(np.int32)
    dataset = tf.data.Dataset.from_tensors((images, labels)).repeat()
    train_loop = make_train_loop(strategy, model, optimizer, global_step, 255, 1e-4)
    before = model.get_weights()
    outputs = train_loop(iter(strategy.experimental_distribute_dataset(dataset)), tf.constant(30))
    assert bool(outputs["all_finite"]) and int(outputs["steps"]) == 30
    assert np.isfinite(float(outputs["loss"]))
    assert float(outputs["loss_scale"]) < 2**40
    assert outputs["loss_scale"].dtype == tf.float32
    after = model.get_weights()
    assert all(np.all(np.isfinite(w)) for w in after)
    assert any(not np.allclose(a, b) for a, b in zip(before, after, strict=True))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("policy", "jit_compile", "compute_dtype"),
    [("mixed_bfloat16", True, "bfloat16"), ("mixed_float16", True, "float16"), ("float32", True, "float32")],
)
def test_train_lib_builds_the_model_under_the_configured_precision(tmp_path, policy, jit_compile, compute_dtype):
    parse_smoke_config(str(tmp_path / "data"))
    model_dir = str(tmp_path / "run")
    train_config = TrainConfig(
        steps=3, global_batch_size=4, steps_per_loop=3, precision=policy, jit_compile=jit_compile, summary_every=1
    )
    state = smoke_run_state(model_dir, train_config)
    try:
        assert state.context.state.model.backbone.compute_dtype == compute_dtype
        state.train_until(3)
    finally:
        state.close()
    events = scalar_events(os.path.join(model_dir, "train"))
    assert np.isfinite(events["loss"][-1][1])
    assert ("loss_scale" in events) == (policy == "mixed_float16")
    # train_lib makes its writer the default while the loop runs, so the loop's per-step summaries land there.
    assert [step for step, _ in events["per_step/loss"]] == [1, 2, 3]
