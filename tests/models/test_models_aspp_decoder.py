"""Tests for trainer/models/aspp.py and decoder.py: global context wiring, shapes, configs."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from trainer.models.aspp import ASPP
from trainer.models.decoder import Decoder


def test_aspp_shape_and_branches():
    aspp = ASPP(filters=8, atrous_rates=(2, 3, 4), dropout_rate=0.0)
    out = aspp(tf.random.normal([2, 10, 12, 6]), training=False)
    assert out.shape == (2, 10, 12, 8)
    assert [conv.conv.dilation_rate for conv in aspp.atrous_convs] == [(2, 2), (3, 3), (4, 4)]
    # Five branches of 8 channels feed the 1×1 projection.
    assert aspp.projection.conv.kernel.shape == (1, 1, 5 * 8, 8)


def test_aspp_image_pooling_gives_global_context():
    keras.utils.set_random_seed(0)
    aspp = ASPP(filters=8, atrous_rates=(2, 3, 4), dropout_rate=0.0)
    x = np.random.default_rng(0).normal(size=(1, 32, 32, 4)).astype("float32")
    changed = x.copy()
    changed[0, 0, 0, :] += 50.0
    before = aspp(x, training=False).numpy()
    after = aspp(changed, training=False).numpy()
    # The largest dilation (4) reaches 4 px; only image pooling connects opposite corners of a 32×32 map.
    assert np.abs(after[0, 31, 31] - before[0, 31, 31]).max() > 1e-4
    # Silencing the pooling branch removes the dependence: it was the only path between the corners.
    aspp.pool_conv.conv.kernel.assign(tf.zeros_like(aspp.pool_conv.conv.kernel))
    np.testing.assert_array_equal(
        aspp(changed, training=False).numpy()[0, 31, 31], aspp(x, training=False).numpy()[0, 31, 31]
    )


def test_aspp_accepts_dynamic_spatial_shapes():
    aspp = ASPP(filters=4, atrous_rates=(1, 2, 3))
    run = tf.function(lambda x: aspp(x, training=False), input_signature=[tf.TensorSpec([None, None, None, 3])])
    assert run(tf.ones([1, 5, 7, 3])).shape == (1, 5, 7, 4)
    assert run(tf.ones([2, 9, 3, 3])).shape == (2, 9, 3, 4)


def test_aspp_config_and_validation():
    config = ASPP(filters=12, atrous_rates=(3, 6, 9), dropout_rate=0.25, name="a").get_config()
    assert (config["filters"], config["atrous_rates"], config["dropout_rate"]) == (12, (3, 6, 9), 0.25)
    assert ASPP.from_config(config).get_config() == config
    with pytest.raises(ValueError, match=r"expected `dropout_rate` in \[0, 1\), received 1.5"):
        ASPP(dropout_rate=1.5)
    with pytest.raises(ValueError, match=r"ASPP.atrous_rates\[1\]: expected a positive integer, received 0"):
        ASPP(atrous_rates=(6, 0, 18))


def test_decoder_fuses_at_low_level_resolution():
    decoder = Decoder(low_level_filters=4, filters=6)
    out = decoder((tf.random.normal([2, 3, 4, 10]), tf.random.normal([2, 12, 16, 7])), training=False)
    assert out.shape == (2, 12, 16, 6)
    assert decoder.low_level_conv.conv.kernel.shape == (1, 1, 7, 4)
    # The first refinement sees upsampled context (10) + reduced low-level (4) channels.
    assert decoder.refine_conv1.conv.kernel.shape == (3, 3, 14, 6)
    config = decoder.get_config()
    assert (config["low_level_filters"], config["filters"]) == (4, 6)
    assert Decoder.from_config(config).get_config() == config
    with pytest.raises(ValueError, match=r"Decoder.filters: expected a positive integer, received -2"):
        Decoder(filters=-2)
