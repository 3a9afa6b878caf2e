"""The moving average of the weights: its arithmetic, the exact swap, the train loop, eval and checkpoints."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tests.helpers import (
    make_train_loop,
    mirrored_strategy,
    one_device_strategy,
    parse_smoke_config,
    smoke_run_state,
    tiny_deeplab,
)
from trainer import train_lib
from trainer.common.errors import UserInputError
from trainer.core import ema as ema_lib
from trainer.core import optim
from trainer.core.config import TrainConfig

pytestmark = pytest.mark.usefixtures("clear_gin")


def test_update_follows_the_warmed_up_decay_and_the_swap_is_exact():
    strategy = one_device_strategy()
    with strategy.scope():
        weights = tf.Variable([1.0, 2.0])
        ema = ema_lib.ExponentialMovingAverage([weights], decay=0.9)
    expected = np.array([1.0, 2.0])
    for step, value in enumerate(([3.0, 3.0], [5.0, -1.0], [0.0, 0.0])):
        weights.assign(value)
        ema.update(tf.constant(step, tf.int64))
        decay = min(0.9, (1 + step) / (10 + step))
        expected = decay * expected + (1 - decay) * np.array(value)
        np.testing.assert_allclose(ema.averages[0].numpy(), expected, rtol=1e-6)
    with ema.average_weights():
        np.testing.assert_allclose(weights.numpy(), expected, rtol=1e-6)
    np.testing.assert_array_equal(weights.numpy(), [0.0, 0.0])
    np.testing.assert_allclose(ema.averages[0].numpy(), expected, rtol=1e-6)


def test_the_weights_come_back_when_the_block_raises():
    with one_device_strategy().scope():
        weights = tf.Variable([1.0])
        ema = ema_lib.ExponentialMovingAverage([weights], decay=0.5)
    weights.assign([4.0])
    with pytest.raises(RuntimeError), ema.average_weights():
        assert weights.numpy()[0] == 1.0
        raise RuntimeError("evaluation failed")
    assert weights.numpy()[0] == 4.0


def test_decay_outside_the_open_interval_is_a_config_error():
    with pytest.raises(UserInputError, match=r"train.ema_decay: expected a decay in \(0, 1\)"):
        ema_lib.ExponentialMovingAverage([tf.Variable(1.0)], decay=1.0)


@pytest.mark.slow
@pytest.mark.parametrize("strategy_fn", [one_device_strategy, mirrored_strategy], ids=["one_device", "mirrored"])
def test_train_loop_updates_the_average_of_every_weight_and_batch_norm_statistic(strategy_fn):
    strategy = strategy_fn()
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = tiny_deeplab(3)
        model(tf.zeros([1, 32, 32, 3]))
        optimizer = optim.build_optimizer(optim.OptimizerConfig(learning_rate=0.05), total_steps=10)
        global_step = tf.Variable(0, dtype=tf.int64, aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        ema = ema_lib.ExponentialMovingAverage(model.variables, decay=0.5)
    assert len(ema.averages) == len(model.trainable_variables) + len(model.non_trainable_variables)
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, size=(8, 32, 32, 3)).astype(np.float32)
    labels = rng.integers(0, 3, size=(8, 32, 32)).astype(np.int32)
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(4, drop_remainder=True)
    train_loop = make_train_loop(strategy, model, optimizer, global_step, 255, 1e-4, ema=ema)
    # The averages start as copies of the weights; after two steps they trail the weights.
    history = [model.get_weights()]
    iterator = iter(strategy.experimental_distribute_dataset(dataset))
    for _ in range(2):
        train_loop(iterator, tf.constant(1))
        history.append(model.get_weights())
    raw = history[-1]
    averages = [a.numpy() for a in ema.averages]
    moving_statistics = {id(v) for v in model.non_trainable_variables}
    for variable, initial, after_one, final, average in zip(model.variables, *history, averages, strict=True):
        # Step 0 uses decay min(0.5, 1/10) = 0.1, step 1 min(0.5, 2/11) = 2/11.
        expected = 2 / 11 * (0.1 * initial + 0.9 * after_one) + 9 / 11 * final
        np.testing.assert_allclose(average, expected, rtol=1e-5, atol=1e-6, err_msg=variable.name)
    changed = [not np.allclose(a, w) for a, w, v in zip(averages, raw, model.variables, strict=True)]
    assert sum(changed) > len(changed) // 2
    assert any(c for c, v in zip(changed, model.variables, strict=True) if id(v) in moving_statistics)

    with ema.average_weights():
        for weight, average in zip(model.get_weights(), averages, strict=True):
            np.testing.assert_array_equal(weight, average)
    for weight, before in zip(model.get_weights(), raw, strict=True):
        np.testing.assert_array_equal(weight, before)


def test_evaluation_uses_the_averaged_weights_and_checkpoints_keep_them(tmp_path):
    parse_smoke_config(str(tmp_path / "data"))
    model_dir = str(tmp_path / "run")
    train_config = TrainConfig(steps=3, global_batch_size=4, steps_per_loop=3, ema_decay=0.5)
    state = smoke_run_state(model_dir, train_config)
    try:
        state.train_until(3)
        with_average = state.evaluate()
        # The same evaluation with the averaged weights put in by hand, then with the raw weights.
        ema = state.context.state.ema
        raw_weights = dataclasses.replace(state.context, state=dataclasses.replace(state.context.state, ema=None))
        raw_evaluator = train_lib.build_evaluator(raw_weights)
        with ema.average_weights():
            by_hand = state.evaluate(raw_evaluator)
        raw = state.evaluate(raw_evaluator)
    finally:
        state.close()
    assert with_average["miou"] == by_hand["miou"]
    assert with_average["pixel_accuracy"] != raw["pixel_accuracy"]
    reader = tf.train.load_checkpoint(state.context.checkpointer.latest_checkpoint)
    saved = [name for name in reader.get_variable_to_shape_map() if name.startswith("ema/averages/")]
    assert len(saved) == len(ema.averages)
