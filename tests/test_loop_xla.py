"""TPU readiness without a TPU: each backbone's train step compiles with XLA and runs under mixed_bfloat16."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tests.helpers import make_train_loop, one_device_strategy
from trainer.core import optim
from trainer.models import (
    ConvNeXt,
    DeepLabV3Plus,
    EfficientNetV2,
    KerasXception,
    MobileNetV2,
    MobileNetV3,
    ResNet,
    Xception65,
)

pytestmark = pytest.mark.slow  # each compiles and trains full steps: tens of seconds

BACKBONES = {
    "resnet": lambda: ResNet(block_depths=(1, 1, 1, 1), base_filters=4, output_stride=16),
    "mobilenet_v2": lambda: MobileNetV2(output_stride=16, width_multiplier=0.35, include_final_conv=False),
    "xception65": lambda: Xception65(output_stride=16, width_multiplier=0.0625, middle_flow_blocks=1),
    "mobilenet_v3": lambda: MobileNetV3("small", output_stride=16, width_multiplier=0.35),
    "efficientnet_v2": lambda: EfficientNetV2("b0", output_stride=16, width_coefficient=0.25, depth_coefficient=0.25),
    "convnext": lambda: ConvNeXt(output_stride=16, depths=(1, 1, 1, 1), projection_dims=(8, 16, 24, 32)),
    "keras_xception": lambda: KerasXception(output_stride=16, width_multiplier=0.0625, middle_flow_blocks=1),
}


def _tiny_model(backbone):
    return DeepLabV3Plus(
        3, backbone=backbone, aspp_filters=8, aspp_dropout_rate=0.0, low_level_filters=4, decoder_filters=8
    )


def _batches(size=32, batch=2):
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, size=(2 * batch, size, size, 3)).astype(np.float32)
    labels = rng.integers(0, 3, size=(2 * batch, size, size)).astype(np.int32)
    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch, drop_remainder=True)


@pytest.fixture
def mixed_bfloat16():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_train_step_compiles_with_xla_under_mixed_bfloat16(backbone, mixed_bfloat16):
    strategy = one_device_strategy()
    with strategy.scope():
        model = _tiny_model(BACKBONES[backbone]())
        model(tf.zeros([1, 32, 32, 3]))
        optimizer = optim.build_optimizer(optim.OptimizerConfig(learning_rate=0.01), total_steps=10)
        global_step = tf.Variable(0, dtype=tf.int64)
    before = [w.copy() for w in model.get_weights()]
    # XLA really compiles the forward and backward pass (an HLO module comes out), under bf16 compute.
    compiled = tf.function(lambda x: model(x, training=True), jit_compile=True)
    hlo = compiled.experimental_get_compiler_ir(tf.zeros([2, 32, 32, 3]))(stage="hlo")
    assert "HloModule" in hlo and "bf16" in hlo
    train_loop = make_train_loop(
        strategy, model, optimizer, global_step, ignore_label=255, l2_weight_decay=1e-4, jit_compile=True
    )
    dataset = strategy.experimental_distribute_dataset(_batches())
    outputs = train_loop(iter(dataset), tf.constant(2))
    assert bool(outputs["all_finite"]) and np.isfinite(float(outputs["loss"]))
    assert int(global_step.numpy()) == 2
    assert all(v.dtype == tf.float32 for v in model.trainable_variables)
    assert any(not np.allclose(a, b) for a, b in zip(before, model.get_weights(), strict=True))


def test_xla_step_matches_the_plain_step_in_float32():
    strategy = one_device_strategy()
    results = []
    for jit_compile in (False, True):
        keras.utils.set_random_seed(0)
        with strategy.scope():
            model = _tiny_model(BACKBONES["resnet"]())
            model(tf.zeros([1, 64, 64, 3]))
            optimizer = optim.build_optimizer(optim.OptimizerConfig(learning_rate=0.01), total_steps=10)
            global_step = tf.Variable(0, dtype=tf.int64)
        train_loop = make_train_loop(
            strategy, model, optimizer, global_step, ignore_label=255, l2_weight_decay=1e-4, jit_compile=jit_compile
        )
        # One step at 64 px: batch norm over tiny maps amplifies float reordering differences step after step.
        outputs = train_loop(iter(strategy.experimental_distribute_dataset(_batches(size=64))), tf.constant(1))
        results.append((float(outputs["loss"]), model.get_weights()))
    (plain_loss, plain_weights), (xla_loss, xla_weights) = results
    np.testing.assert_allclose(xla_loss, plain_loss, rtol=1e-4)
    for a, b in zip(plain_weights, xla_weights, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
