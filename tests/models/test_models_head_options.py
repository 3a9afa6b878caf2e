"""Head options from the DeepLab papers: rates that follow the output stride, separable convs, fixed-size image
pooling, the DeepLabV3 variant without decoder, odd input sizes."""

import numpy as np
import pytest
import tensorflow as tf

from trainer.models import (
    ASPP,
    BatchNormConfig,
    DeepLabV3,
    DeepLabV3Plus,
    ResNet,
    SeparableConvBNReLU,
    configure_batch_norm,
)
from trainer.models.deeplab import default_aspp_rates

TINY_HEAD = {"aspp_filters": 8, "low_level_filters": 4, "decoder_filters": 8, "aspp_dropout_rate": 0.0}


def _tiny_backbone(output_stride=16):
    return ResNet(block_depths=(1, 1, 1, 1), base_filters=4, output_stride=output_stride)


@pytest.mark.parametrize("output_stride, rates", [(16, (6, 12, 18)), (8, (12, 24, 36)), (32, (3, 6, 9))])
def test_default_aspp_rates_follow_the_output_stride(output_stride, rates):
    model = DeepLabV3Plus(5, backbone=_tiny_backbone(output_stride), **TINY_HEAD)
    assert model.aspp.atrous_rates == rates == default_aspp_rates(output_stride)
    assert [conv.conv.dilation_rate for conv in model.aspp.atrous_convs] == [(r, r) for r in rates]


def test_explicit_rates_win():
    model = DeepLabV3Plus(5, backbone=_tiny_backbone(), aspp_rates=(1, 2, 3), **TINY_HEAD)
    assert model.aspp.atrous_rates == (1, 2, 3)


def test_separable_convs_replace_aspp_and_decoder_3x3_and_cut_parameters():
    plain = DeepLabV3Plus(5, backbone=_tiny_backbone(), **{**TINY_HEAD, "aspp_filters": 32, "decoder_filters": 32})
    separable = DeepLabV3Plus(
        5, backbone=_tiny_backbone(), separable_convs=True, **{**TINY_HEAD, "aspp_filters": 32, "decoder_filters": 32}
    )
    images = tf.zeros([1, 64, 64, 3])
    plain(images)
    separable(images)
    assert all(isinstance(conv, SeparableConvBNReLU) for conv in separable.aspp.atrous_convs)
    assert isinstance(separable.decoder.refine_conv1, SeparableConvBNReLU)
    assert separable.aspp.atrous_convs[1].depthwise.dilation_rate == (12, 12)
    assert separable.count_params() < plain.count_params()


def test_fixed_pool_size_pools_locally_on_larger_inputs_and_globally_on_smaller():
    aspp = ASPP(filters=4, atrous_rates=(1, 2, 3), dropout_rate=0.0, pool_size=(4, 4))
    rng = np.random.default_rng(0)
    features = tf.constant(rng.normal(size=(1, 4, 4, 6)), tf.float32)
    # At the training size, the window covers the whole map: same as the global average.
    np.testing.assert_allclose(aspp.image_pool(features), tf.reduce_mean(features, [1, 2], keepdims=True), atol=1e-6)
    larger = tf.constant(rng.normal(size=(1, 7, 9, 6)), tf.float32)
    assert aspp.image_pool(larger).shape == (1, 4, 6, 6)
    smaller = tf.constant(rng.normal(size=(1, 3, 2, 6)), tf.float32)
    np.testing.assert_allclose(aspp.image_pool(smaller), tf.reduce_mean(smaller, [1, 2], keepdims=True), atol=1e-6)
    assert aspp(larger, training=False).shape == (1, 7, 9, 4)


@pytest.mark.parametrize("model_class", [DeepLabV3Plus, DeepLabV3])
@pytest.mark.parametrize("size", [(65, 65), (64, 96), (129, 97)])
def test_logits_match_odd_and_even_input_sizes(model_class, size):
    head = dict(TINY_HEAD) if model_class is DeepLabV3Plus else {"aspp_filters": 8, "aspp_dropout_rate": 0.0}
    model = model_class(3, backbone=_tiny_backbone(8), aspp_pool_size=(9, 9), **head)
    logits = model(tf.zeros([1, *size, 3]), training=False)
    assert logits.shape == (1, *size, 3) and logits.dtype == tf.float32


def test_deeplab_v3_has_no_decoder_and_round_trips_its_config():
    model = DeepLabV3(4, backbone=_tiny_backbone(), aspp_filters=8)
    model(tf.zeros([1, 32, 32, 3]))
    assert not hasattr(model, "decoder")
    rebuilt = DeepLabV3.from_config(model.get_config())
    assert rebuilt.get_config()["aspp_rates"] == (6, 12, 18)
    assert rebuilt.num_classes == 4


def test_frozen_batch_norm_statistics_stay_put_while_gamma_and_beta_train():
    import gin
    import tf_keras as keras

    gin.clear_config()
    gin.bind_parameter("batch_norm.freeze_statistics", True)
    try:
        model = DeepLabV3Plus(3, backbone=_tiny_backbone(), **TINY_HEAD)
        configure_batch_norm(model, BatchNormConfig())
        images = tf.random.stateless_normal([2, 32, 32, 3], seed=[1, 2])
        model(images)
    finally:
        gin.clear_config()
    norms = [layer for layer in model.submodules if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and all(layer.freeze_statistics for layer in norms)
    np.testing.assert_allclose(model(images, training=True), model(images, training=False), atol=1e-6)
    moving_before = [layer.moving_mean.numpy().copy() for layer in norms]
    gamma_before = [layer.gamma.numpy().copy() for layer in norms]
    optimizer = keras.optimizers.SGD(0.1)
    labels = tf.zeros([2, 32, 32], tf.int32)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(
            tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=model(images, training=True))
        )
    gradients = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
    for layer, before in zip(norms, moving_before, strict=True):
        np.testing.assert_array_equal(layer.moving_mean.numpy(), before)
    assert any(not np.allclose(layer.gamma.numpy(), before) for layer, before in zip(norms, gamma_before, strict=True))


@pytest.mark.parametrize("backbone_name", ["resnet", "xception65", "mobilenet_v2"])
def test_every_backbone_gives_logits_at_513x513(backbone_name):
    from trainer.models import MobileNetV2, Xception65

    backbone = {
        "resnet": lambda: ResNet(block_depths=(1, 1, 1, 1), base_filters=4, output_stride=16),
        "xception65": lambda: Xception65(output_stride=16, width_multiplier=0.0625, middle_flow_blocks=1),
        "mobilenet_v2": lambda: MobileNetV2(output_stride=16, width_multiplier=0.35, include_final_conv=False),
    }[backbone_name]()
    model = DeepLabV3Plus(21, backbone=backbone, aspp_pool_size=(33, 33), **TINY_HEAD)
    features = backbone(tf.zeros([1, 513, 513, 3]))
    assert features["low_level"].shape[1:3] == (129, 129) and features["high_level"].shape[1:3] == (33, 33)
    assert model(tf.zeros([1, 513, 513, 3]), training=False).shape == (1, 513, 513, 21)
