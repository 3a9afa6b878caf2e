"""Head options from the DeepLab papers: rates that follow the output stride, separable convs, fixed-size image
pooling, the DeepLabV3 variant without decoder, odd input sizes."""

import numpy as np
import pytest
import tensorflow as tf

from trainer.models import ASPP, DeepLabV3, DeepLabV3Plus, ResNet, SeparableConvBNReLU
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
    np.testing.assert_allclose(aspp._image_pool(features), tf.reduce_mean(features, [1, 2], keepdims=True), atol=1e-6)
    larger = tf.constant(rng.normal(size=(1, 7, 9, 6)), tf.float32)
    assert aspp._image_pool(larger).shape == (1, 4, 6, 6)
    smaller = tf.constant(rng.normal(size=(1, 3, 2, 6)), tf.float32)
    np.testing.assert_allclose(aspp._image_pool(smaller), tf.reduce_mean(smaller, [1, 2], keepdims=True), atol=1e-6)
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
