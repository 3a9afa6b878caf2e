"""Pretrained RGB weights in a backbone built for 1 or 4 input channels: the stem kernel is adapted."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from trainer.models import ResNet
from trainer.models.pretrained import load_keras_applications_h5, rgb_kernel_for_channels

SIZE = 32


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    model = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3))
    rng = np.random.default_rng(0)
    # Distinct RGB kernels in the stem, so a wrong adaptation (say, the red kernel alone) shows.
    stem = model.get_layer("conv1_conv")
    kernel, bias = stem.get_weights()
    stem.set_weights([rng.standard_normal(kernel.shape).astype(np.float32) * 0.05, bias])
    path = str(tmp_path_factory.mktemp("h5") / "resnet50.h5")
    model.save_weights(path)
    return path


def _loaded(path, channels):
    backbone = ResNet(output_stride=32)
    backbone(tf.zeros([1, SIZE, SIZE, channels]), training=False)
    return backbone, load_keras_applications_h5(backbone, path)


def test_kernel_adaptation_is_the_rgb_mean_scaled_by_3_over_c():
    kernel = np.arange(2 * 2 * 3 * 1, dtype=np.float32).reshape(2, 2, 3, 1)
    adapted = rgb_kernel_for_channels(kernel, 4)
    assert adapted.shape == (2, 2, 4, 1)
    np.testing.assert_allclose(adapted[..., 2, :], kernel.mean(axis=2) * 0.75)
    np.testing.assert_allclose(rgb_kernel_for_channels(kernel, 1)[..., 0, :], kernel.sum(axis=2), rtol=1e-6)


@pytest.mark.parametrize("channels", [1, 4])
def test_adapted_stem_gives_the_rgb_models_output_on_a_grey_image(weights_file, channels):
    rgb, rgb_report = _loaded(weights_file, 3)
    adapted, report = _loaded(weights_file, channels)
    assert rgb_report.adapted_to_channels == ()
    assert report.adapted_to_channels == (f"conv1_conv (3 -> {channels} input channels)",)
    assert report.matched == rgb_report.matched
    grey = tf.random.stateless_uniform([2, SIZE, SIZE, 1], seed=(3, 4), minval=-1.0, maxval=1.0)
    expected = rgb(tf.repeat(grey, 3, axis=-1), training=False)["high_level"].numpy()
    actual = adapted(tf.repeat(grey, channels, axis=-1), training=False)["high_level"].numpy()
    assert np.abs(expected).max() > 0.1
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)
