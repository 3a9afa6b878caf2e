"""Tests for trainer.data.schema: the record format round trip and foreign records."""

import numpy as np
import pytest
import tensorflow as tf

from trainer.data import schema


def _random_pair(height: int = 24, width: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    label = rng.integers(0, 5, size=(height, width), dtype=np.uint8)
    label[:3] = 255
    return image, label


def test_png_round_trip_is_exact():
    image, label = _random_pair()
    parsed_image, parsed_label, _ = schema.parse_example(tf.constant(schema.encode_example(image, label, "a.png")))
    assert parsed_image.dtype == tf.uint8 and parsed_label.dtype == tf.uint8
    np.testing.assert_array_equal(parsed_image.numpy(), image)
    np.testing.assert_array_equal(parsed_label.numpy(), label)


def test_round_trip_inside_tf_data_has_known_ranks():
    image, label = _random_pair()
    dataset = tf.data.Dataset.from_tensors(schema.encode_example(image, label, "a.png")).map(schema.parse_example)
    assert dataset.element_spec[0].shape.as_list() == [None, None, 3]
    assert dataset.element_spec[1].shape.as_list() == [None, None]
    parsed_image, parsed_label, filename = next(iter(dataset))
    np.testing.assert_array_equal(parsed_image.numpy(), image)
    np.testing.assert_array_equal(parsed_label.numpy(), label)
    assert filename.numpy() == b"a.png"


def test_foreign_jpeg_record_with_only_the_encoded_keys_parses():
    # A smooth image so JPEG's loss is small; the decode must match TF's own JPEG decoder exactly.
    y, x = np.mgrid[0:32, 0:48]
    image = np.stack([x * 5, y * 7, (x + y) * 3], axis=-1).astype(np.uint8)
    label = (x // 16).astype(np.uint8)
    jpeg = tf.io.encode_jpeg(image, quality=95).numpy()
    feature = {
        schema.IMAGE_ENCODED: tf.train.Feature(bytes_list=tf.train.BytesList(value=[jpeg])),
        schema.LABEL_ENCODED: tf.train.Feature(
            bytes_list=tf.train.BytesList(value=[tf.io.encode_png(label[..., None]).numpy()])
        ),
    }
    serialized = tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()
    parsed_image, parsed_label, _ = schema.parse_example(tf.constant(serialized))
    np.testing.assert_array_equal(parsed_image.numpy(), tf.io.decode_jpeg(jpeg, channels=3).numpy())
    assert np.abs(parsed_image.numpy().astype(int) - image).mean() < 3
    np.testing.assert_array_equal(parsed_label.numpy(), label)


def test_size_mismatch_names_the_record():
    image, _ = _random_pair(height=24)
    _, label = _random_pair(height=20)
    example = tf.train.Example.FromString(schema.encode_example(image, image[..., 0], "bad-0001.png"))
    example.features.feature[schema.LABEL_ENCODED].bytes_list.value[0] = tf.io.encode_png(label[..., None]).numpy()
    dataset = tf.data.Dataset.from_tensors(example.SerializeToString()).map(schema.parse_example)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"bad-0001\.png.*image 24x40 and label 20x40"):
        next(iter(dataset))


@pytest.mark.parametrize(
    "image, label, message",
    [
        (np.zeros((8, 8, 3), np.float32), np.zeros((8, 8), np.uint8), "expected image uint8"),
        (np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8), "expected image uint8"),
        (np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 1), np.uint8), "expected label uint8"),
        (np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9), np.uint8), "same height and width"),
    ],
)
def test_encode_example_rejects_bad_arrays(image, label, message):
    with pytest.raises(ValueError, match=message):
        schema.encode_example(image, label, "x.png")


def test_parse_example_returns_the_filename_and_a_mismatch_names_it():
    image = np.zeros([4, 6, 3], np.uint8)
    good = schema.encode_example(image, np.zeros([4, 6], np.uint8), "good.png")
    assert schema.parse_example(tf.constant(good))[2].numpy() == b"good.png"
    # The error message is only built on failure (check_record), and then names the record.
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"Record good\.png: expected boom"):
        tf.function(
            lambda: schema.check_record(tf.constant(False), lambda: ["Record ", "good.png", ": expected boom"])
        )()
    assert bool(schema.check_record(tf.constant(True), lambda: ["never built"]))
