"""Inference modes: whole image, sliding window and multi-scale/flip TTA, eagerly, in graph and under XLA."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from trainer.common.errors import UserInputError
from trainer.core import inference
from trainer.core.inference import InferenceConfig, predict_logits, slide_logits

NUM_CLASSES = 3


def _images(height=20, width=28, batch=2, seed=0):
    return tf.constant(np.random.default_rng(seed).uniform(-1, 1, (batch, height, width, 3)).astype(np.float32))


def _conv_model(kernel_size=3, seed=0):
    """A small conv net: position-independent but with a receptive field, so windows see different context."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input([None, None, 3])
    hidden = keras.layers.Conv2D(6, kernel_size, padding="same", activation="relu")(inputs)
    outputs = keras.layers.Conv2D(NUM_CLASSES, kernel_size, padding="same")(hidden)
    return keras.Model(inputs, outputs)


def _pointwise(images):
    """Per-pixel logits (a fixed 1x1 projection): equivariant to flips and windows."""
    weights = tf.constant([[1.0, -0.5, 0.2], [0.3, 0.8, -1.0], [-0.7, 0.1, 0.9]])
    return tf.einsum("nhwc,ck->nhwk", images, weights)


def _numpy_slide(logits_fn, images, crop, stride):
    """mmsegmentation's slide_inference, transcribed loop for loop."""
    images = images.numpy()
    batch, height, width, _ = images.shape
    h_crop, w_crop = min(crop[0], height), min(crop[1], width)
    h_grids = max(height - h_crop + stride[0] - 1, 0) // stride[0] + 1
    w_grids = max(width - w_crop + stride[1] - 1, 0) // stride[1] + 1
    preds = np.zeros([batch, height, width, NUM_CLASSES], np.float64)
    count = np.zeros([batch, height, width, 1], np.float64)
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y1, x1 = h_idx * stride[0], w_idx * stride[1]
            y2, x2 = min(y1 + h_crop, height), min(x1 + w_crop, width)
            y1, x1 = max(y2 - h_crop, 0), max(x2 - w_crop, 0)
            preds[:, y1:y2, x1:x2] += logits_fn(tf.constant(images[:, y1:y2, x1:x2])).numpy()
            count[:, y1:y2, x1:x2] += 1
    return preds / count


def test_one_scale_without_flip_equals_plain_inference_exactly():
    model = _conv_model()
    images = _images()
    plain = model(images, training=False).numpy()
    got = predict_logits(lambda x: model(x, training=False), images, NUM_CLASSES, InferenceConfig(scales=(1.0,)))
    np.testing.assert_array_equal(got.numpy(), plain)


def test_sliding_window_with_one_window_equals_whole_image_exactly():
    model = _conv_model()
    images = _images(20, 28)
    plain = model(images, training=False).numpy()
    for crop in [(20, 28), (32, 32)]:  # the image's size, and a window larger than the image
        config = InferenceConfig(mode="slide", crop_size=crop)
        got = predict_logits(lambda x: model(x, training=False), images, NUM_CLASSES, config)
        np.testing.assert_array_equal(got.numpy(), plain)


@pytest.mark.parametrize("crop, stride", [((12, 16), (8, 10)), ((20, 10), (7, 10)), ((8, 8), (8, 8))])
def test_sliding_window_averages_overlaps_as_mmsegmentation(crop, stride):
    model = _conv_model()
    images = _images(20, 28)

    def logits_fn(x):
        return model(x, training=False)

    got = slide_logits(logits_fn, images, NUM_CLASSES, crop, stride).numpy()
    np.testing.assert_allclose(got, _numpy_slide(logits_fn, images, crop, stride), rtol=1e-6, atol=1e-6)
    # Windows see less context than the whole image, so the result differs from it: the test is not vacuous.
    assert np.abs(got - model(images, training=False).numpy()).max() > 1e-3


def test_window_starts_cover_the_side_and_end_flush():
    assert inference.window_starts(20, 12, 8) == [0, 8]
    assert inference.window_starts(28, 16, 10) == [0, 10, 12]
    assert inference.window_starts(16, 16, 5) == [0]


def test_flip_on_a_flip_equivariant_model_equals_plain():
    images = _images()
    plain = _pointwise(images).numpy()
    got = predict_logits(_pointwise, images, NUM_CLASSES, InferenceConfig(flip=True)).numpy()
    np.testing.assert_array_equal(got, plain)
    # A model that is not flip-equivariant does change, so flipping really happens.
    model = _conv_model()
    flipped = predict_logits(lambda x: model(x, training=False), images, NUM_CLASSES, InferenceConfig(flip=True))
    assert np.abs(flipped.numpy() - model(images, training=False).numpy()).max() > 1e-3


def test_multi_scale_averages_logits_resized_back_to_the_input_size():
    model = _conv_model()
    images = _images(20, 28)

    def logits_fn(x):
        return model(x, training=False)

    config = InferenceConfig(scales=(0.5, 1.0, 1.5), flip=True)
    got = predict_logits(logits_fn, images, NUM_CLASSES, config).numpy()
    assert got.shape == (2, 20, 28, NUM_CLASSES)
    expected = np.zeros_like(got)
    for scale in (0.5, 1.0, 1.5):
        size = (int(20 * scale + 0.5), int(28 * scale + 0.5))
        scaled = tf.image.resize(images, size) if scale != 1.0 else images
        for flip in (False, True):
            logits = logits_fn(scaled[:, :, ::-1] if flip else scaled)
            logits = logits[:, :, ::-1] if flip else logits
            expected += tf.image.resize(logits, (20, 28)).numpy() if scale != 1.0 else logits.numpy()
    np.testing.assert_allclose(got, expected / 6, rtol=1e-5, atol=1e-6)


def test_every_mode_compiles_with_static_shapes_under_xla_and_matches_eager():
    model = _conv_model()
    images = _images(20, 28)
    config = InferenceConfig(mode="slide", crop_size=(12, 16), stride=(8, 10), scales=(0.75, 1.25), flip=True)

    def run(x):
        return predict_logits(lambda y: model(y, training=False), x, NUM_CLASSES, config)

    eager = run(images).numpy()
    compiled = tf.function(run, jit_compile=True)
    spec = tf.TensorSpec([2, 20, 28, 3], tf.float32)
    assert compiled.get_concrete_function(spec).structured_outputs.shape == (2, 20, 28, NUM_CLASSES)
    np.testing.assert_allclose(compiled(images).numpy(), eager, rtol=1e-5, atol=1e-5)
    # Only the height and width must be static; a graph with an unknown batch size works too.
    any_batch = tf.function(run, input_signature=[tf.TensorSpec([None, 20, 28, 3], tf.float32)])
    np.testing.assert_allclose(any_batch(images).numpy(), eager, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"mode": "tiles"}, "inference.mode: expected one of {'whole', 'slide'}, received 'tiles'"),
        ({"scales": ()}, "inference.scales: expected a non-empty tuple"),
        ({"scales": (1.0, -0.5)}, "inference.scales"),
        ({"crop_size": (16,)}, "inference.crop_size: expected (height, width)"),
        ({"crop_size": (16, 16), "stride": (8, 20)}, "inference.stride: expected at most the window size"),
        ({"flip": "yes"}, "inference.flip: expected True or False"),
    ],
)
def test_bad_settings_are_config_errors_naming_the_binding(kwargs, message):
    with pytest.raises(UserInputError) as error:
        InferenceConfig(**kwargs)
    assert message in str(error.value)


def test_slide_without_a_crop_size_says_which_binding_to_set():
    with pytest.raises(UserInputError, match="inference.crop_size"):
        predict_logits(_pointwise, _images(), NUM_CLASSES, InferenceConfig(mode="slide"))
    config = InferenceConfig(mode="slide").with_default_crop((12, 12))
    assert config.window() == ((12, 12), (8, 8))
    expected = {"mode": "slide", "scales": [1.0], "flip": False, "crop_size": [12, 12], "stride": [8, 8]}
    assert config.describe() == expected
