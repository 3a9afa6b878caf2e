"""Tests for trainer/models/xception.py: strides, atrous schedule, Xception-65 size, dtypes, XLA, argument checks."""

import math

import gin
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from trainer.common.errors import UserInputError
from trainer.models.separable import SeparableConvBNReLU
from trainer.models.xception import Xception65, XceptionBlock

TINY = {"width_multiplier": 0.0625, "middle_flow_blocks": 1}


@pytest.fixture(autouse=True)
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def _all_blocks(backbone):
    return [*backbone.entry_blocks, *backbone.middle_blocks, *backbone.exit_blocks]


@pytest.mark.parametrize("output_stride", [8, 16, 32])
@pytest.mark.parametrize("size", [64, 65, 97])
def test_feature_strides_for_even_and_odd_inputs(output_stride, size):
    backbone = Xception65(output_stride=output_stride, **TINY)
    features = backbone(tf.random.normal([1, size, size + 2, 3]), training=False)
    assert set(features) == {"low_level", "high_level"}
    assert features["low_level"].shape == (1, math.ceil(size / 4), math.ceil((size + 2) / 4), 16)
    high = (1, math.ceil(size / output_stride), math.ceil((size + 2) / output_stride), 128)
    assert features["high_level"].shape == high
    assert backbone.output_stride == output_stride


@pytest.mark.parametrize(
    "width_multiplier, low_channels, high_channels, stem_channels",
    [(0.0625, 16, 128, 8), (0.125, 32, 256, 8), (0.3, 77, 614, 10)],
)
def test_channels_follow_width_multiplier(width_multiplier, low_channels, high_channels, stem_channels):
    backbone = Xception65(width_multiplier=width_multiplier, middle_flow_blocks=1)
    features = backbone(tf.zeros([1, 32, 32, 3]), training=False)
    assert features["low_level"].shape[-1] == low_channels
    assert features["high_level"].shape[-1] == high_channels
    # round(32 × width), but never below 8 channels.
    assert backbone.entry_conv1.filters == stem_channels
    assert backbone.middle_blocks[0].depths == (round(728 * width_multiplier),) * 3


def _schedule(backbone):
    return [(block.strides, block.dilation_rate) for block in _all_blocks(backbone)]


def _depthwise(backbone):
    return [
        [(conv.depthwise.strides[0], conv.depthwise.dilation_rate[0]) for conv in block.separable_convs]
        for block in _all_blocks(backbone)
    ]


@pytest.mark.parametrize(
    "output_stride, schedule",
    [
        # (stride, dilation) of entry blocks 1-3, middle blocks 1-2, exit blocks 1-2 (stack_blocks_dense).
        (32, [(2, 1), (2, 1), (2, 1), (1, 1), (1, 1), (2, 1), (1, 1)]),
        (16, [(2, 1), (2, 1), (2, 1), (1, 1), (1, 1), (1, 1), (1, 2)]),
        (8, [(2, 1), (2, 1), (1, 1), (1, 2), (1, 2), (1, 2), (1, 4)]),
    ],
)
def test_atrous_schedule_follows_output_stride(output_stride, schedule):
    backbone = Xception65(output_stride=output_stride, width_multiplier=0.0625, middle_flow_blocks=2)
    assert _schedule(backbone) == schedule
    # The stride sits on the last separable conv only; every depthwise conv of a block shares its dilation.
    expected = [[(1, dilation), (1, dilation), (stride, dilation)] for stride, dilation in schedule]
    assert _depthwise(backbone) == expected
    assert [block.skip for block in _all_blocks(backbone)] == ["conv"] * 3 + ["sum"] * 2 + ["conv", "none"]


@pytest.mark.parametrize("output_stride, step", [(16, 2), (8, 4)])
def test_atrous_features_equal_strided_features_on_their_grid(output_stride, step):
    # On 32k+1 inputs, 'same' padding keeps strided convs, 1×1 shortcuts and their dense versions aligned, so
    # with shared weights the dense output sampled every `step` pixels equals the output-stride-32 output.
    kwargs = {"width_multiplier": 0.0625, "middle_flow_blocks": 2}
    images = tf.random.stateless_normal([2, 65, 65, 3], seed=(1, 2))
    strided = Xception65(output_stride=32, **kwargs)
    expected = strided(images, training=False)["high_level"].numpy()
    dense = Xception65(output_stride=output_stride, **kwargs)
    dense(images, training=False)
    dense.set_weights(strided.get_weights())
    features = dense(images, training=False)
    actual = features["high_level"].numpy()
    assert actual.shape == (2, 65 // output_stride + 1, 65 // output_stride + 1, 128)
    scale = float(np.abs(expected).max())
    assert scale > 0
    np.testing.assert_allclose(actual[:, ::step, ::step], expected, rtol=1e-4, atol=1e-5 * scale)
    np.testing.assert_allclose(
        features["low_level"].numpy(), strided(images, training=False)["low_level"].numpy(), rtol=1e-5, atol=1e-6
    )


def _separable_conv_params(in_channels, out_channels):
    # 3×3 depthwise + BN (gamma, beta, mean, variance) + 1×1 pointwise + BN.
    return 9 * in_channels + 4 * in_channels + in_channels * out_channels + 4 * out_channels


def _expected_params():
    """Xception-65 weights counted by hand from the architecture, BN moving statistics included."""
    total = 3 * 3 * 3 * 32 + 4 * 32 + 3 * 3 * 32 * 64 + 4 * 64
    specs = [(64, (128,) * 3, True), (128, (256,) * 3, True), (256, (728,) * 3, True)]
    specs += [(728, (728,) * 3, False)] * 16
    specs += [(728, (728, 1024, 1024), True), (1024, (1536, 1536, 2048), False)]
    for block_in, depths, projection in specs:
        channels = block_in
        for depth in depths:
            total += _separable_conv_params(channels, depth)
            channels = depth
        if projection:
            total += block_in * depths[-1] + 4 * depths[-1]
    return total


def test_xception65_parameter_count():
    backbone = Xception65()
    features = backbone(tf.zeros([1, 33, 33, 3]), training=False)
    assert features["low_level"].shape == (1, 9, 9, 256)
    assert features["high_level"].shape == (1, 3, 3, 2048)
    assert backbone.count_params() == 38_052_512 == _expected_params()
    trainable = sum(int(tf.size(w)) for w in backbone.trainable_weights)
    assert trainable == 37_867_312
    assert 35e6 < backbone.count_params() < 45e6
    assert (len(backbone.entry_blocks), len(backbone.middle_blocks), len(backbone.exit_blocks)) == (3, 16, 2)


def test_mixed_bfloat16_policy():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        backbone = Xception65(**TINY)
        features = backbone(tf.random.normal([1, 33, 33, 3]), training=True)
        assert features["low_level"].dtype == tf.bfloat16
        assert features["high_level"].dtype == tf.bfloat16
        assert all(weight.dtype == tf.float32 for weight in backbone.weights)
        assert np.isfinite(tf.cast(features["high_level"], tf.float32).numpy()).all()
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_jit_compiled_forward_and_gradient_match_eager():
    backbone = Xception65(output_stride=8, **TINY)
    images = tf.random.stateless_normal([2, 33, 33, 3], seed=(3, 4))
    backbone(images, training=False)

    def loss_and_grads(images):
        with tf.GradientTape() as tape:
            features = backbone(images, training=True)
            loss = tf.reduce_sum(features["high_level"] ** 2) + tf.reduce_sum(features["low_level"])
        return loss, tape.gradient(loss, backbone.trainable_weights)

    eager_loss, eager_grads = loss_and_grads(images)
    jit_loss, jit_grads = tf.function(loss_and_grads, jit_compile=True)(images)
    np.testing.assert_allclose(jit_loss.numpy(), eager_loss.numpy(), rtol=1e-4)
    assert len(jit_grads) == len(backbone.trainable_weights)
    for jit_grad, eager_grad in zip(jit_grads, eager_grads, strict=True):
        assert jit_grad is not None
        # Batch-statistics BN on 2 tiny images amplifies float reassociation, so compare against each grad's scale.
        scale = float(np.abs(eager_grad.numpy()).max())
        np.testing.assert_allclose(jit_grad.numpy(), eager_grad.numpy(), rtol=1e-3, atol=1e-3 * scale + 1e-6)
    assert any(float(tf.reduce_max(tf.abs(grad))) > 0 for grad in jit_grads)


def test_xception_block_skips_and_low_level_tap():
    x = tf.random.normal([1, 8, 8, 16])
    identity = XceptionBlock((8, 8, 16), skip="sum")
    y = identity(x)
    assert y.shape == x.shape and identity.shortcut is None
    # No ReLU after the sum: negative inputs pass straight through the identity.
    assert float(tf.reduce_min(y)) < 0.0

    projected = XceptionBlock((8, 12, 24), skip="conv", strides=2)
    y, hidden = projected(x, return_hidden=True)
    assert y.shape == (1, 4, 4, 24) and hidden.shape == (1, 8, 8, 12)
    assert projected.shortcut is not None and projected.shortcut.strides == 2

    plain = XceptionBlock((8, 8, 8), skip="none", dilation_rate=2)
    y = plain(x)
    assert y.shape == (1, 8, 8, 8) and float(tf.reduce_min(y)) >= 0.0

    separable = SeparableConvBNReLU(6, strides=2)
    assert separable(tf.random.normal([1, 7, 7, 4])).shape == (1, 4, 4, 6)
    assert separable.depthwise.use_bias is False and separable.pointwise.use_bias is False


def test_serialization_names_do_not_collide_with_other_model_files():
    # Keras keeps one class per registered name and silently lets a later import replace an earlier one.
    import trainer.models  # noqa: F401  (registers every other model file's layers)

    for cls in (SeparableConvBNReLU, XceptionBlock, Xception65):
        assert keras.saving.get_registered_object(keras.saving.get_registered_name(cls)) is cls


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"output_stride": 4}, r"expected `output_stride` in \(8, 16, 32\), received 4"),
        ({"output_stride": "16"}, r"expected `output_stride` in \(8, 16, 32\), received '16'"),
        ({"width_multiplier": 0}, r"expected `width_multiplier` to be a positive finite number, received 0 \(of"),
        ({"width_multiplier": -0.5}, r"expected `width_multiplier` to be a positive finite number, received -0.5"),
        ({"width_multiplier": float("nan")}, r"expected `width_multiplier` to be a positive finite number"),
        (
            {"width_multiplier": True},
            r"expected `width_multiplier` to be a positive finite number, received True \(of type bool\)",
        ),
        (
            {"width_multiplier": "1.0"},
            r"expected `width_multiplier` to be a positive finite number, received '1.0' \(of type str\)",
        ),
        ({"middle_flow_blocks": 0}, r"middle_flow_blocks: expected a positive integer, received 0"),
    ],
)
def test_invalid_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises(UserInputError, match=r"Xception65[.:] ?" + message):
        Xception65(**{**TINY, **kwargs})


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"depths": (8, 8)}, r"depths: expected 3 entries \(one per separable conv\)"),
        ({"depths": (8, 8, 8), "skip": "identity"}, r"skip: expected one of \{conv, sum, none\}"),
        ({"depths": (8, 8, 8), "skip": "sum", "strides": 2}, r"expected strides == 1 with skip='sum'"),
        ({"depths": (8, 8, 8), "strides": 2, "dilation_rate": 2}, r"expected strides == 1 or dilation_rate == 1"),
    ],
)
def test_invalid_block_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises(UserInputError, match=message):
        XceptionBlock(**kwargs)


def test_config_round_trip_and_gin():
    backbone = Xception65(output_stride=8, width_multiplier=0.125, middle_flow_blocks=3, name="xc")
    config = backbone.get_config()
    assert (config["output_stride"], config["width_multiplier"], config["middle_flow_blocks"]) == (8, 0.125, 3)
    assert config["name"] == "xc"
    clone = Xception65.from_config(config)
    assert clone.get_config() == config
    assert _schedule(clone) == _schedule(backbone)

    block = XceptionBlock((8, 12, 16), skip="conv", strides=1, dilation_rate=2, name="b")
    # A JSON round trip turns tuples into lists; those must be accepted too.
    block_clone = XceptionBlock.from_config({**block.get_config(), "depths": [8, 12, 16]})
    assert block_clone.get_config() == block.get_config()
    separable = SeparableConvBNReLU(8, dilation_rate=4)
    assert SeparableConvBNReLU.from_config(separable.get_config()).get_config() == separable.get_config()

    gin.parse_config(
        "Xception65.output_stride = 32\nXception65.width_multiplier = 0.0625\nXception65.middle_flow_blocks = 1"
    )
    configured = Xception65()
    assert (configured.output_stride, configured.width_multiplier, configured.middle_flow_blocks) == (32, 0.0625, 1)
    assert len(configured.middle_blocks) == 1
