"""Tests for trainer.data.augment: determinism eagerly and in tf.data, alignment, padding."""

import numpy as np
import pytest
import tensorflow as tf

from trainer.data import augment

IGNORE = 255


def _pair(height: int = 40, width: int = 48) -> tuple[tf.Tensor, tf.Tensor]:
    """Returns a blocky label map and an image whose channel 0 equals the label (the others random)."""
    rng = np.random.default_rng(0)
    label = np.kron(rng.integers(0, 5, size=(height // 8, width // 8)), np.ones((8, 8))).astype(np.uint8)
    image = rng.uniform(-1.0, 1.0, size=(height, width, 3)).astype(np.float32)
    image[..., 0] = label
    return tf.constant(image), tf.constant(label)


OPS = {
    "scale": lambda image, label, seed: augment.random_scale(image, label, seed, 0.5, 2.0),
    "pad": lambda image, label, seed: augment.pad_to_size(image, label, 56, 50, IGNORE),
    "crop": lambda image, label, seed: augment.random_crop(image, label, seed, 24, 32),
    "flip": lambda image, label, seed: augment.random_horizontal_flip(image, label, seed),
    "scale_step": lambda image, label, seed: augment.random_scale(image, label, seed, 0.5, 2.0, scale_step=0.25),
    "pad_per_channel": lambda image, label, seed: augment.pad_to_size(image, label, 56, 50, IGNORE, (0.1, -0.2, 0.3)),
    "jitter": lambda image, label, seed: (
        augment.photometric_jitter(image, seed, 32 / 255, (0.5, 1.5), (0.5, 1.5), 0.05),
        label,
    ),
}


@pytest.mark.parametrize("name", sorted(OPS))
def test_op_is_identical_eagerly_and_in_tf_data(name):
    op = OPS[name]
    image, label = _pair()
    for seed in ([1, 2], [3, 4], [5, 6]):
        seed = tf.constant(seed, tf.int64)
        eager = op(image, label, seed)
        dataset = tf.data.Dataset.from_tensors((image, label, seed)).map(op)
        in_graph = next(iter(dataset))
        np.testing.assert_array_equal(eager[0].numpy(), in_graph[0].numpy())
        np.testing.assert_array_equal(eager[1].numpy(), in_graph[1].numpy())
        assert eager[1].dtype == tf.uint8 and eager[0].dtype == tf.float32


@pytest.mark.parametrize("name", ["scale", "crop", "flip", "scale_step", "jitter"])
def test_op_depends_on_the_seed(name):
    image, label = _pair()
    results = {OPS[name](image, label, tf.constant([s, 0], tf.int64))[0].numpy().tobytes() for s in range(8)}
    assert len(results) > 1


def test_random_scale_resizes_within_range_and_keeps_labels_exact():
    image, label = _pair()
    sizes = set()
    for s in range(10):
        scaled_image, scaled_label = augment.random_scale(image, label, tf.constant([s, 1]), 0.5, 2.0)
        height, width = scaled_label.shape
        assert 20 <= height <= 80 and scaled_image.shape[:2] == (height, width)
        sizes.add(height)
        # Nearest-neighbour labels: no new values; the bilinear image agrees with them almost everywhere.
        assert set(np.unique(scaled_label)) <= set(np.unique(label))
        agreement = np.rint(scaled_image[..., 0].numpy()) == scaled_label.numpy()
        assert agreement.mean() > 0.85
    assert len(sizes) > 3


def test_pad_to_size_pads_bottom_right_with_ignore():
    image, label = _pair(16, 24)
    padded_image, padded_label = augment.pad_to_size(image, label, 20, 30, IGNORE, image_pad_value=-1.0)
    assert padded_image.shape == (20, 30, 3) and padded_label.shape == (20, 30)
    np.testing.assert_array_equal(padded_image[:16, :24], image)
    np.testing.assert_array_equal(padded_label[:16, :24], label)
    assert (padded_label.numpy()[16:] == IGNORE).all() and (padded_label.numpy()[:, 24:] == IGNORE).all()
    assert (padded_image.numpy()[16:] == -1.0).all() and (padded_image.numpy()[:, 24:] == -1.0).all()
    # Already large enough in one dimension: that one is left alone.
    assert augment.pad_to_size(image, label, 8, 30, IGNORE)[1].shape == (16, 30)


def test_crop_and_flip_keep_image_and_label_aligned():
    image, label = _pair(40, 48)
    for s in range(6):
        seeds = tf.random.experimental.stateless_split(tf.constant([s, 9], tf.int64), num=3)
        out_image, out_label = augment.random_scale(image, label, seeds[0], 1.0, 1.0)
        out_image, out_label = augment.pad_to_size(out_image, out_label, 48, 56, IGNORE)
        out_image, out_label = augment.random_crop(out_image, out_label, seeds[1], 44, 40)
        out_image, out_label = augment.random_horizontal_flip(out_image, out_label, seeds[2])
        assert out_image.shape == (44, 40, 3) and out_label.shape == (44, 40)
        valid = out_label.numpy() != IGNORE
        assert valid.mean() > 0.5
        np.testing.assert_array_equal(out_image.numpy()[..., 0][valid], out_label.numpy()[valid])


def test_random_flip_flips_both_or_neither():
    image, label = _pair()
    flipped = 0
    for s in range(16):
        out_image, out_label = augment.random_horizontal_flip(image, label, tf.constant([s, 3]))
        if np.array_equal(out_label, label[:, ::-1]) and not np.array_equal(out_label, label):
            flipped += 1
            np.testing.assert_array_equal(out_image, image[:, ::-1])
        else:
            np.testing.assert_array_equal(out_image, image)
            np.testing.assert_array_equal(out_label, label)
    assert 0 < flipped < 16


def test_random_crop_has_static_shape_in_graph_and_rejects_small_images():
    image, label = _pair(40, 48)
    dataset = tf.data.Dataset.from_tensors((image, label)).map(
        lambda image, label: augment.random_crop(image, label, tf.constant([0, 0]), 24, 32)
    )
    assert dataset.element_spec[0].shape.as_list() == [24, 32, 3]
    assert dataset.element_spec[1].shape.as_list() == [24, 32]
    with pytest.raises(tf.errors.InvalidArgumentError, match="expected an image of at least 48x48"):
        augment.random_crop(image, label, tf.constant([0, 0]), 48, 48)


def test_scale_step_draws_only_the_steps():
    image, label = _pair(40, 48)
    heights = {
        augment.random_scale(image, label, tf.constant([s, 2]), 0.5, 2.0, scale_step=0.25)[1].shape[0]
        for s in range(40)
    }
    # 40 * {0.5, 0.75, ..., 2.0}: every step is drawn, nothing in between.
    assert heights == {20, 30, 40, 50, 60, 70, 80}


def test_photometric_jitter_stays_in_range_and_changes_colours_globally():
    image, _ = _pair()
    image = tf.clip_by_value(image, -1.0, 1.0)
    for s in range(4):
        out = augment.photometric_jitter(image, tf.constant([s, 7]), 32 / 255, (0.5, 1.5), (0.5, 1.5), 0.05).numpy()
        assert out.shape == image.shape and -1.0 <= out.min() and out.max() <= 1.0
        assert not np.allclose(out, image.numpy())
    # Everything off: the image comes back as it was (up to float rounding of the [0, 1] round trip).
    same = augment.photometric_jitter(image, tf.constant([0, 0]), 0.0, (1.0, 1.0), (1.0, 1.0), 0.0)
    np.testing.assert_allclose(same.numpy(), image.numpy(), atol=1e-6)
