"""Tests for trainer/models/deeplab.py: logits shapes and dtype, gin wiring, sync BN, configs, training."""

import gin
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tests.helpers import mirrored_strategy
from trainer.models import BatchNormConfig, DeepLabV3Plus, ResNet, configure_batch_norm

TINY_HEAD = {"aspp_filters": 16, "decoder_filters": 16, "low_level_filters": 8}


def tiny_model(num_classes: int = 5, **kwargs) -> DeepLabV3Plus:
    backbone = ResNet(block_depths=(1, 1, 1, 1), base_filters=8)
    return DeepLabV3Plus(num_classes, backbone=backbone, **{**TINY_HEAD, **kwargs})


@pytest.fixture(autouse=True)
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


@pytest.fixture
def mixed_bfloat16():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_logits_shape_and_dtype():
    logits = tiny_model()(tf.random.normal([2, 48, 64, 3]), training=False)
    assert logits.shape == (2, 48, 64, 5)
    assert logits.dtype == tf.float32
    assert np.isfinite(logits.numpy()).all()


def test_any_input_size_including_dynamic():
    model = tiny_model(num_classes=3)
    assert model(tf.random.normal([1, 50, 70, 3]), training=False).shape == (1, 50, 70, 3)
    serve = tf.function(lambda x: model(x, training=False), input_signature=[tf.TensorSpec([None, None, None, 3])])
    assert serve(tf.zeros([2, 33, 47, 3])).shape == (2, 33, 47, 3)
    assert serve(tf.zeros([1, 64, 40, 3])).shape == (1, 64, 40, 3)


def test_mixed_precision_logits_are_float32(mixed_bfloat16):
    model = tiny_model()
    logits = model(tf.random.normal([2, 48, 64, 3]), training=True)
    assert logits.dtype == tf.float32
    assert model.classifier.compute_dtype == "bfloat16"
    assert model.backbone.stem_conv.conv.kernel.dtype == tf.float32  # variables stay float32
    assert np.isfinite(logits.numpy()).all()


def test_gin_configures_backbone_and_head():
    gin.parse_config(
        """
        DeepLabV3Plus.backbone = @ResNet()
        ResNet.block_depths = (1, 1, 1, 1)
        ResNet.base_filters = 4
        ResNet.output_stride = 8
        DeepLabV3Plus.aspp_filters = 8
        DeepLabV3Plus.aspp_rates = (12, 24, 36)
        DeepLabV3Plus.decoder_filters = 8
        DeepLabV3Plus.low_level_filters = 4
        """
    )
    model = DeepLabV3Plus(num_classes=4)
    assert model.backbone.output_stride == 8 and model.backbone.base_filters == 4
    assert model.aspp.atrous_rates == (12, 24, 36)
    assert model(tf.zeros([1, 32, 32, 3])).shape == (1, 32, 32, 4)


def test_default_backbone_is_gin_configured_resnet():
    gin.parse_config("ResNet.block_depths = (1, 1, 1, 1)\nResNet.base_filters = 4")
    model = DeepLabV3Plus(num_classes=2, **TINY_HEAD)
    assert isinstance(model.backbone, ResNet)
    assert model.backbone.block_depths == (1, 1, 1, 1)


def _batch_norms(model):
    return [layer for layer in model.submodules if isinstance(layer, keras.layers.BatchNormalization)]


def test_gin_sync_batch_norm_reaches_every_bn():
    assert not any(bn.synchronized for bn in _batch_norms(tiny_model()))
    gin.bind_parameter("batch_norm.sync", True)
    model = tiny_model()
    # stem 1 + 4 blocks × 4 + ASPP 6 + decoder 3
    assert configure_batch_norm(model, BatchNormConfig()) == 26
    norms = _batch_norms(model)
    assert len(norms) == 26
    assert all(bn.synchronized for bn in norms)

    strategy = mirrored_strategy()
    with strategy.scope():
        model = tiny_model()
        configure_batch_norm(model, BatchNormConfig())
    images = tf.random.normal([4, 32, 32, 3])
    dataset = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensor_slices(images).batch(4))
    per_replica = strategy.run(tf.function(lambda x: model(x, training=True)), args=(next(iter(dataset)),))
    shapes = [t.shape for t in strategy.experimental_local_results(per_replica)]
    assert shapes == [(2, 32, 32, 5), (2, 32, 32, 5)]


def test_config_round_trip():
    model = tiny_model(num_classes=7, aspp_rates=(3, 6, 9), aspp_dropout_rate=0.2)
    config = model.get_config()
    expected = {
        "num_classes": 7,
        "aspp_filters": 16,
        "aspp_rates": (3, 6, 9),
        "aspp_dropout_rate": 0.2,
        "low_level_filters": 8,
        "decoder_filters": 16,
    }
    assert {key: config[key] for key in expected} == expected
    clone = DeepLabV3Plus.from_config(config)
    assert clone.get_config() == config
    assert isinstance(clone.backbone, ResNet)
    assert clone.backbone.get_config() == model.backbone.get_config()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_classes": 1}, r"expected `num_classes` to be an int >= 2, received 1 \(of type int\)"),
        ({"num_classes": 3.0}, r"expected `num_classes` to be an int >= 2, received 3.0 \(of type float\)"),
        ({"num_classes": 3, "aspp_filters": 0}, r"DeepLabV3Plus.aspp_filters: expected a positive integer, received 0"),
        ({"num_classes": 3, "backbone": "resnet50"}, r"expected `backbone` to be a keras Model"),
    ],
)
def test_invalid_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DeepLabV3Plus(**kwargs)


def test_a_few_sgd_steps_reduce_the_loss():
    keras.utils.set_random_seed(1)
    model = tiny_model(num_classes=3, aspp_dropout_rate=0.0)
    images = tf.random.normal([2, 32, 32, 3], seed=1)
    # Class = which vertical third a pixel lies in; a fixed batch the model can fit within a few steps.
    labels = tf.tile(tf.repeat(tf.range(3), [11, 11, 10])[None, None, :], [2, 32, 1])
    optimizer = keras.optimizers.SGD(learning_rate=0.05, momentum=0.9)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = loss_fn(labels, model(images, training=True))
        optimizer.apply_gradients(
            zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables, strict=True)
        )
        return loss

    losses = [float(step()) for _ in range(10)]
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.7 * losses[0], losses
