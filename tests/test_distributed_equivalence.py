"""The heart of a distributed trainer: OneDevice and Mirrored (2 logical CPUs) take identical steps.

Same initial weights, same global batch: with synchronised batch norm the loss and every updated weight
(moving statistics included) must agree to 1e-5 in float32.
"""

import gin
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tests.helpers import mirrored_strategy, one_device_strategy
from trainer import loop, optim
from trainer.models import DeepLabV3Plus, ResNet

NUM_CLASSES = 4
GLOBAL_BATCH = 4


@pytest.fixture(autouse=True)
def _sync_batch_norm():
    gin.clear_config()
    gin.bind_parameter("batch_norm.sync", True)
    yield
    gin.clear_config()


def _batches():
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, size=(3 * GLOBAL_BATCH, 32, 32, 3)).astype(np.float32)
    labels = rng.integers(0, NUM_CLASSES, size=(3 * GLOBAL_BATCH, 32, 32)).astype(np.int32)
    labels[:, :3] = 255
    return tf.data.Dataset.from_tensor_slices((images, labels))


def _train(strategy, initial_weights):
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = DeepLabV3Plus(
            num_classes=NUM_CLASSES,
            backbone=ResNet(block_depths=(1, 1, 1, 1), base_filters=4, output_stride=16),
            aspp_filters=8,
            aspp_rates=(1, 2, 3),
            aspp_dropout_rate=0.0,
            low_level_filters=4,
            decoder_filters=8,
        )
        model(tf.zeros([1, 32, 32, 3]))
        if initial_weights is not None:
            model.set_weights(initial_weights)
        optimizer = optim.build_optimizer(total_steps=10, learning_rate=0.01)
        global_step = tf.Variable(0, dtype=tf.int64, aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
    weights_before = model.get_weights()
    dataset = strategy.distribute_datasets_from_function(
        lambda context: _batches().batch(context.get_per_replica_batch_size(GLOBAL_BATCH), drop_remainder=True)
    )
    train_loop = loop.make_train_loop(strategy, model, optimizer, global_step, ignore_label=255, l2_weight_decay=1e-4)
    outputs = train_loop(iter(dataset), tf.constant(3))
    return weights_before, float(outputs["loss"]), model.get_weights(), int(global_step.numpy())


def test_one_device_and_mirrored_take_identical_steps():
    single = one_device_strategy()
    mirrored = mirrored_strategy()
    assert mirrored.num_replicas_in_sync == 2

    initial, single_loss, single_weights, single_step = _train(single, None)
    _, mirrored_loss, mirrored_weights, mirrored_step = _train(mirrored, initial)

    assert single_step == mirrored_step == 3
    np.testing.assert_allclose(mirrored_loss, single_loss, rtol=1e-5, atol=1e-5)
    moved = 0
    for before, a, b in zip(initial, single_weights, mirrored_weights, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
        moved += not np.allclose(a, before)
    # The comparison means something only if training changed the weights.
    assert moved > len(initial) // 2


def test_per_replica_batch_norm_breaks_the_equality():
    # The control: without synchronisation each replica normalises with its own half-batch statistics,
    # so the same comparison must fail — proof that the test above can detect a difference.
    gin.bind_parameter("batch_norm.sync", False)
    initial, _, single_weights, _ = _train(one_device_strategy(), None)
    _, _, mirrored_weights, _ = _train(mirrored_strategy(), initial)
    largest = max(np.max(np.abs(a - b)) for a, b in zip(single_weights, mirrored_weights, strict=True))
    assert largest > 1e-3
