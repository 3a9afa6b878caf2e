"""The heart of a distributed trainer: OneDevice and Mirrored (2 logical CPUs) take identical steps.

Same initial weights, same global batch: with synchronised batch norm the loss and every updated weight
(moving statistics included) must agree to 1e-5 in float32 — with the plain loop, and with every option that
touches the normalisation or the update (class weights, label smoothing, hard-pixel mining, clipping, a cosine
schedule, a backbone learning-rate multiplier, the moving average, gradient accumulation).
"""

import gin
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tests.helpers import make_train_loop, mirrored_strategy, one_device_strategy
from trainer.core import losses, optim
from trainer.core.ema import ExponentialMovingAverage
from trainer.models import (
    BatchNormConfig,
    ConvNeXt,
    DeepLabV3Plus,
    EfficientNetV2,
    KerasXception,
    MobileNetV3,
    ResNet,
    configure_batch_norm,
)

pytestmark = pytest.mark.slow  # each compiles and trains full steps: tens of seconds

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


PLAIN = {}
# SGD, not Adam(W): Adam divides each gradient by its own magnitude, so on weights whose gradient is ~0 it turns
# float-summation-order noise (1e-7 relative) into updates of the learning rate's size. The optimizer's update is
# element-wise and the same under every strategy; what must agree is what reaches it.
FULL_OPTIONS = {
    "optimizer": {
        "nesterov": True,
        "schedule": "cosine",
        "warmup_steps": 1,
        "global_clipnorm": 0.5,
        "backbone_learning_rate_multiplier": 0.1,
    },
    "loop": {
        "l2_weight_decay": 1e-3,
        "loss": losses.SegmentationLoss(
            class_weights=(1.0, 2.0, 0.5, 1.5), label_smoothing=0.1, top_k_percent_pixels=0.3
        ),
    },
    "ema_decay": 0.5,
}


# Thin models of the other families (stochastic depth off: its masks are drawn per replica).
BACKBONES = {
    "resnet": lambda: ResNet(block_depths=(1, 1, 1, 1), base_filters=4, output_stride=16),
    "mobilenet_v3": lambda: MobileNetV3("large", output_stride=16, width_multiplier=0.35),
    "efficientnet_v2": lambda: EfficientNetV2(
        "s", output_stride=16, drop_connect_rate=0.0, width_coefficient=0.25, depth_coefficient=0.25
    ),
    "convnext": lambda: ConvNeXt(output_stride=16, depths=(1, 1, 1, 1), projection_dims=(8, 16, 24, 32)),
    "keras_xception": lambda: KerasXception(output_stride=16, width_multiplier=0.0625, middle_flow_blocks=1),
}


def _train(strategy, initial_weights, options=PLAIN, accumulation=1, backbone="resnet", steps=3):
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = DeepLabV3Plus(
            num_classes=NUM_CLASSES,
            backbone=BACKBONES[backbone](),
            aspp_filters=8,
            aspp_rates=(1, 2, 3),
            aspp_dropout_rate=0.0,
            low_level_filters=4,
            decoder_filters=8,
        )
        configure_batch_norm(model, BatchNormConfig())
        model(tf.zeros([1, 32, 32, 3]))
        if initial_weights is not None:
            model.set_weights(initial_weights)
        optimizer = optim.build_optimizer(
            optim.OptimizerConfig(learning_rate=0.01, **options.get("optimizer", {})), total_steps=10, model=model
        )
        global_step = tf.Variable(0, dtype=tf.int64, aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        ema = ExponentialMovingAverage(model.variables, options["ema_decay"]) if "ema_decay" in options else None
    weights_before = model.get_weights()
    dataset = strategy.distribute_datasets_from_function(
        lambda context: _batches().batch(context.get_per_replica_batch_size(GLOBAL_BATCH), drop_remainder=True)
    )
    loop_options = {"l2_weight_decay": 1e-4, **options.get("loop", {})}
    train_loop = make_train_loop(
        strategy,
        model,
        optimizer,
        global_step,
        ignore_label=255,
        ema=ema,
        gradient_accumulation_steps=accumulation,
        **loop_options,
    )
    outputs = train_loop(iter(dataset), tf.constant(steps))
    weights = model.get_weights() + ([a.numpy() for a in ema.averages] if ema else [])
    return weights_before, float(outputs["loss"]), weights, int(global_step.numpy()), float(outputs["gradient_norm"])


@pytest.mark.parametrize("options", [PLAIN, FULL_OPTIONS], ids=["plain", "all_options"])
def test_one_device_and_mirrored_take_identical_steps(options):
    single = one_device_strategy()
    mirrored = mirrored_strategy()
    assert mirrored.num_replicas_in_sync == 2

    initial, single_loss, single_weights, single_step, gradient_norm = _train(single, None, options)
    _, mirrored_loss, mirrored_weights, mirrored_step, _ = _train(mirrored, initial, options)

    assert single_step == mirrored_step == 3
    if "global_clipnorm" in options.get("optimizer", {}):
        assert gradient_norm > options["optimizer"]["global_clipnorm"]  # the clipping did engage
    np.testing.assert_allclose(mirrored_loss, single_loss, rtol=1e-5, atol=1e-5)
    # With the moving average, its copies follow the model's weights in the list and are compared too.
    assert len(single_weights) == len(initial) * (2 if options.get("ema_decay") else 1)
    moved = 0
    for before, a, b in zip(initial + initial, single_weights, mirrored_weights, strict=False):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
        moved += not np.allclose(a, before)
    # The comparison means something only if training changed the weights.
    assert moved > len(initial) // 2


@pytest.mark.parametrize("backbone", sorted(set(BACKBONES) - {"resnet"}))
def test_every_backbone_family_takes_the_same_step_under_one_device_and_mirrored(backbone):
    initial, single_loss, single_weights, _, _ = _train(one_device_strategy(), None, backbone=backbone, steps=1)
    _, mirrored_loss, mirrored_weights, _, _ = _train(mirrored_strategy(), initial, backbone=backbone, steps=1)
    np.testing.assert_allclose(mirrored_loss, single_loss, rtol=1e-5, atol=1e-5)
    for a, b in zip(single_weights, mirrored_weights, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
    assert sum(not np.allclose(a, b) for a, b in zip(initial, single_weights, strict=True)) > len(initial) // 2


def test_mirrored_accumulation_equals_the_one_device_whole_batch_with_frozen_statistics():
    # Accumulating 2 micro-batches per replica (1 image each under Mirrored) against the whole batch of 4 on one
    # device. Batch norm with frozen statistics makes each image's logits independent of its batch-mates; with
    # live statistics a micro-batch normalises over other images than the whole batch, whatever the strategy.
    gin.bind_parameter("batch_norm.freeze_statistics", True)
    initial, single_loss, single_weights, _, _ = _train(one_device_strategy(), None)
    _, mirrored_loss, mirrored_weights, _, _ = _train(mirrored_strategy(), initial, accumulation=2)
    np.testing.assert_allclose(mirrored_loss, single_loss, rtol=1e-5)
    for a, b in zip(single_weights, mirrored_weights, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


def test_per_replica_batch_norm_breaks_the_equality():
    # The control: without synchronisation each replica normalises with its own half-batch statistics,
    # so the same comparison must fail — proof that the test above can detect a difference.
    gin.bind_parameter("batch_norm.sync", False)
    initial, _, single_weights, _, _ = _train(one_device_strategy(), None)
    _, _, mirrored_weights, _, _ = _train(mirrored_strategy(), initial)
    largest = max(np.max(np.abs(a - b)) for a, b in zip(single_weights, mirrored_weights, strict=True))
    assert largest > 1e-3
