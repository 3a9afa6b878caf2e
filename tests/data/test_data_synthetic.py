"""Tests for trainer.data.synthetic: the renderer's properties and the on-disk dataset's caching."""

import os

import numpy as np
import pytest
import tensorflow as tf

from trainer.data import info as info_lib
from trainer.data import schema, synthetic
from trainer.data.tfrecord import count_examples

NUM_CLASSES = len(synthetic.CLASS_NAMES)


@pytest.fixture(scope="module")
def rendered() -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(123)
    return [synthetic.render_example(rng, 64) for _ in range(50)]


def test_render_example_is_deterministic_by_seed():
    first = synthetic.render_example(np.random.default_rng(7), 48)
    again = synthetic.render_example(np.random.default_rng(7), 48)
    other = synthetic.render_example(np.random.default_rng(8), 48)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])


def test_render_example_shapes_and_label_values(rendered):
    for image, label in rendered:
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        assert label.shape == (64, 64) and label.dtype == np.uint8
        assert set(np.unique(label)) <= set(range(NUM_CLASSES)) | {synthetic.IGNORE_LABEL}
        # Background remains, and at least one shape is visible.
        assert (label == 0).any() and ((label > 0) & (label < NUM_CLASSES)).any()


def test_every_class_appears_with_a_sizeable_area(rendered):
    labels = np.stack([label for _, label in rendered])
    for class_id in range(NUM_CLASSES):
        assert (labels == class_id).mean() > 0.02, synthetic.CLASS_NAMES[class_id]


def test_boundaries_between_labels_are_ignore_bands(rendered):
    for _, label in rendered:
        ignore = label == synthetic.IGNORE_LABEL
        assert ignore.any()
        # No two 4-adjacent labelled pixels have different classes: every boundary lies under ignore.
        for a, b in ((label[:, :-1], label[:, 1:]), (label[:-1, :], label[1:, :])):
            labelled = (a != synthetic.IGNORE_LABEL) & (b != synthetic.IGNORE_LABEL)
            assert not (labelled & (a != b)).any()
        # A thin band, not a mask over whole shapes.
        assert ignore.mean() < 0.2


def test_colour_carries_little_class_information(rendered):
    # Mean colours per shape class should be close (all classes share one texture distribution).
    means = []
    for class_id in range(1, NUM_CLASSES):
        pixels = np.concatenate([image[label == class_id] for image, label in rendered])
        means.append(pixels.mean(axis=0))
    assert np.ptp(np.stack(means), axis=0).max() < 40


def test_synthetic_shapes_generates_then_reuses(tmp_path):
    kwargs = dict(data_dir=str(tmp_path), image_size=32, num_train_examples=10, num_eval_examples=6, num_shards=2)
    info = synthetic.synthetic_shapes(**kwargs, seed=3)
    directory = tmp_path / f"v{synthetic.GENERATOR_VERSION}_s32_n10_e6_k2_seed3"
    assert sorted(os.listdir(tmp_path)) == [directory.name]  # no staging directory left behind
    assert sorted(os.listdir(directory)) == [
        "dataset_info.json",
        "eval-00000-of-00002.tfrecord",
        "eval-00001-of-00002.tfrecord",
        "train-00000-of-00002.tfrecord",
        "train-00001-of-00002.tfrecord",
    ]
    assert info.train_files == tuple(str(directory / f"train-0000{k}-of-00002.tfrecord") for k in range(2))
    assert (info.num_classes, info.class_names, info.max_image_size) == (5, synthetic.CLASS_NAMES, (32, 32))
    assert count_examples(info.train_files) == 10 and count_examples(info.eval_files) == 6
    assert info_lib.load(str(directory / "dataset_info.json")) == info

    mtimes = {name: os.stat(directory / name).st_mtime_ns for name in os.listdir(directory)}
    assert synthetic.synthetic_shapes(**kwargs, seed=3) == info
    assert {name: os.stat(directory / name).st_mtime_ns for name in os.listdir(directory)} == mtimes

    image, label, _ = schema.parse_example(next(iter(tf.data.TFRecordDataset(info.eval_files[0]))))
    assert image.shape == (32, 32, 3) and label.shape == (32, 32)


def test_synthetic_shapes_is_deterministic_and_splits_differ(tmp_path):
    kwargs = dict(image_size=32, num_train_examples=4, num_eval_examples=4, num_shards=1, seed=5)
    first = synthetic.synthetic_shapes(data_dir=str(tmp_path / "a"), **kwargs)
    second = synthetic.synthetic_shapes(data_dir=str(tmp_path / "b"), **kwargs)
    records = [list(tf.data.TFRecordDataset(files).as_numpy_iterator()) for files in (first.train_files,)]
    assert records[0] == list(tf.data.TFRecordDataset(second.train_files).as_numpy_iterator())
    train_images = [schema.parse_example(r)[0].numpy() for r in tf.data.TFRecordDataset(first.train_files)]
    eval_images = [schema.parse_example(r)[0].numpy() for r in tf.data.TFRecordDataset(first.eval_files)]
    assert not any(np.array_equal(a, b) for a in train_images for b in eval_images)


def test_synthetic_shapes_keeps_the_copy_of_a_concurrent_winner(tmp_path, monkeypatch):
    kwargs = dict(data_dir=str(tmp_path), image_size=32, num_train_examples=4, num_eval_examples=4, num_shards=1)
    winner = synthetic.synthetic_shapes(**kwargs)
    info_path = str(tmp_path / f"v{synthetic.GENERATOR_VERSION}_s32_n4_e4_k1_seed0" / "dataset_info.json")
    mtime = os.stat(info_path).st_mtime_ns
    real_exists = tf.io.gfile.exists
    calls = []

    def exists_after_the_check(path):
        # The first look misses the dataset, as if another worker renamed its copy in just after.
        calls.append(path)
        return False if len(calls) == 1 else real_exists(path)

    monkeypatch.setattr(tf.io.gfile, "exists", exists_after_the_check)
    assert synthetic.synthetic_shapes(**kwargs) == winner
    assert os.stat(info_path).st_mtime_ns == mtime
    assert sorted(os.listdir(tmp_path)) == [f"v{synthetic.GENERATOR_VERSION}_s32_n4_e4_k1_seed0"]


def test_synthetic_shapes_rejects_more_shards_than_examples(tmp_path):
    with pytest.raises(ValueError, match=r"synthetic_shapes\.num_shards"):
        synthetic.synthetic_shapes(data_dir=str(tmp_path), num_train_examples=10, num_eval_examples=2, num_shards=4)


def test_synthetic_shapes_with_a_relative_data_dir_lists_existing_files(tmp_path, monkeypatch):
    # The default data_dir is relative; the listed files must resolve to the generated ones, both on the
    # generating call and on the reusing one.
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        info = synthetic.synthetic_shapes(
            data_dir="relative/dir", image_size=16, num_train_examples=4, num_eval_examples=2, num_shards=2
        )
        assert all(tf.io.gfile.exists(f) for f in info.train_files + info.eval_files)
        assert count_examples(info.train_files) == 4
