"""The train loop: gradient accumulation, the NaN/Inf guard, the scalars it returns and the summaries it records."""

import gin
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tests.helpers import make_train_loop, one_device_strategy, scalar_events, tiny_deeplab
from trainer.common.errors import UserInputError
from trainer.core import losses, optim
from trainer.core.config import TrainConfig
from trainer.models import BatchNormConfig, configure_batch_norm

pytestmark = pytest.mark.usefixtures("clear_gin")

NUM_CLASSES = 3
SIZE = 32


def _examples(count, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(-1, 1, size=(count, SIZE, SIZE, 3)).astype(np.float32)
    labels = rng.integers(0, NUM_CLASSES, size=(count, SIZE, SIZE)).astype(np.int32)
    labels[:, :4] = 255
    return images, labels


def _build(strategy, initial_weights=None, **optimizer_args):
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = tiny_deeplab(NUM_CLASSES)
        configure_batch_norm(model, BatchNormConfig())
        model(tf.zeros([1, SIZE, SIZE, 3]))
        if initial_weights is not None:
            model.set_weights(initial_weights)
        optimizer = optim.build_optimizer(
            optim.OptimizerConfig(learning_rate=0.05, **optimizer_args), total_steps=10, model=model
        )
        global_step = tf.Variable(0, dtype=tf.int64, aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
    return model, optimizer, global_step


def _iterator(strategy, images, labels, batch):
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch, drop_remainder=True)
    return iter(strategy.experimental_distribute_dataset(dataset))


def test_accumulating_four_micro_batches_of_two_equals_one_batch_of_eight():
    # Batch norm with frozen statistics normalises every image with the same moving statistics, so each image's
    # logits do not depend on its batch-mates: the only difference left between the two runs is the
    # accumulation itself. (With live batch norm a micro-batch of 2 has other statistics than a batch of 8,
    # so no accumulation scheme can be exact.)
    gin.bind_parameter("batch_norm.freeze_statistics", True)
    strategy = one_device_strategy()
    images, labels = _examples(16)
    loss = losses.SegmentationLoss(class_weights=(1.0, 2.0, 0.5), label_smoothing=0.1, top_k_percent_pixels=0.5)
    results = {}
    initial = None
    for accumulation in (1, 4):
        model, optimizer, global_step = _build(strategy, initial)
        initial = initial or model.get_weights()
        train_loop = make_train_loop(
            strategy,
            model,
            optimizer,
            global_step,
            ignore_label=255,
            l2_weight_decay=1e-3,
            loss=loss,
            gradient_accumulation_steps=accumulation,
        )
        outputs = train_loop(_iterator(strategy, images, labels, batch=8), tf.constant(2))
        results[accumulation] = ({k: float(v) for k, v in outputs.items()}, model.get_weights())
    (whole, whole_weights), (accumulated, accumulated_weights) = results[1], results[4]
    for name in ("loss", "cross_entropy", "l2_regularization", "gradient_norm", "weight_norm"):
        np.testing.assert_allclose(accumulated[name], whole[name], rtol=1e-5, err_msg=name)
    moved = 0
    for before, a, b in zip(initial, whole_weights, accumulated_weights, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
        moved += not np.allclose(a, before)
    assert moved > len(initial) // 2


def test_accumulation_steps_must_divide_the_per_replica_batch():
    strategy = one_device_strategy()
    model, optimizer, global_step = _build(strategy)
    train_loop = make_train_loop(strategy, model, optimizer, global_step, 255, 0.0, gradient_accumulation_steps=3)
    images, labels = _examples(4)
    # Raised while tracing (autograph re-raises it as a StagingError carrying the message); train_lib checks the
    # same rule on the configuration before anything is traced.
    with pytest.raises(Exception, match=r"gradient_accumulation_steps: expected a divisor of the per-replica batch"):
        train_loop(_iterator(strategy, images, labels, batch=4), tf.constant(1))
    with pytest.raises(UserInputError, match="train.gradient_accumulation_steps: expected a positive integer"):
        TrainConfig(gradient_accumulation_steps=0)


def test_nan_in_the_input_stops_the_loop_at_that_step():
    strategy = one_device_strategy()
    model, optimizer, global_step = _build(strategy)
    images, labels = _examples(10)
    images[5, 3, 3, 0] = np.nan  # batch index 2 (batches of 2): the third step
    train_loop = make_train_loop(strategy, model, optimizer, global_step, 255, 1e-4)
    outputs = train_loop(_iterator(strategy, images, labels, batch=2), tf.constant(5))
    assert not bool(outputs["all_finite"])
    assert int(outputs["nonfinite_step"]) == 3 == int(outputs["steps"]) == int(global_step.numpy())


def test_a_non_finite_gradient_with_a_finite_loss_is_caught():
    @tf.custom_gradient
    def nan_gradient(value):
        return tf.identity(value), lambda upstream: tf.fill(tf.shape(upstream), np.nan)

    class PoisonedGradient(keras.layers.Layer):
        """Adds a zero variable to its input: the output is untouched, the variable's gradient is NaN."""

        def build(self, input_shape):
            self.v = self.add_weight("v", shape=(), initializer="zeros")

        def call(self, x):
            return x + nan_gradient(self.v)

    strategy = one_device_strategy()
    with strategy.scope():
        model = keras.Sequential([keras.layers.Conv2D(NUM_CLASSES, 1), PoisonedGradient()])
        model(tf.zeros([1, SIZE, SIZE, 3]))
        optimizer = optim.build_optimizer(optim.OptimizerConfig(), total_steps=10)
        global_step = tf.Variable(0, dtype=tf.int64)
    images, labels = _examples(4)
    train_loop = make_train_loop(strategy, model, optimizer, global_step, 255, 0.0)
    outputs = train_loop(_iterator(strategy, images, labels, batch=2), tf.constant(2))
    assert np.isfinite(float(outputs["loss"])) and not np.isfinite(float(outputs["gradient_norm"]))
    assert not bool(outputs["all_finite"]) and int(outputs["nonfinite_step"]) == 1


def test_loop_returns_float_scalars_and_records_per_step_summaries(tmp_path):
    strategy = one_device_strategy()
    model, optimizer, global_step = _build(strategy)
    images, labels = _examples(12)
    train_loop = make_train_loop(strategy, model, optimizer, global_step, 255, 1e-4, summary_every=2)
    writer = tf.summary.create_file_writer(str(tmp_path))
    with writer.as_default():
        outputs = train_loop(_iterator(strategy, images, labels, batch=2), tf.constant(5))
    writer.close()
    floats = {name for name, value in outputs.items() if value.dtype.is_floating}
    assert floats == {
        "loss",
        "cross_entropy",
        "l2_regularization",
        "gradient_norm",
        "learning_rate",
        "weight_norm",
    }
    np.testing.assert_allclose(
        float(outputs["loss"]), float(outputs["cross_entropy"]) + float(outputs["l2_regularization"]), rtol=1e-6
    )
    np.testing.assert_allclose(
        float(outputs["weight_norm"]),
        np.sqrt(sum((w**2).sum() for w in keras.backend.batch_get_value(model.trainable_variables))),
        rtol=1e-5,
    )
    assert bool(outputs["all_finite"]) and int(outputs["steps"]) == 5 and int(outputs["nonfinite_step"]) == -1
    events = scalar_events(str(tmp_path))
    for name in ("loss", "cross_entropy", "gradient_norm", "learning_rate"):
        assert [step for step, _ in events[f"per_step/{name}"]] == [2, 4], name


def test_l2_weight_decay_with_adamw_is_refused():
    strategy = one_device_strategy()
    model, optimizer, global_step = _build(strategy, algorithm="adamw")
    with pytest.raises(UserInputError, match="train.l2_weight_decay: expected 0 with optimizer.algorithm = 'adamw'"):
        make_train_loop(strategy, model, optimizer, global_step, 255, 1e-4)
