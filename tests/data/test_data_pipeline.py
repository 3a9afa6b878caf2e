"""Tests for trainer.data.pipeline: shapes, sharding, exact eval over input pipelines, label checks."""

import logging
import os

import gin
import numpy as np
import pytest
import tensorflow as tf

from trainer.data import schema
from trainer.data.info import DatasetInfo
from trainer.data.jitter import PhotometricJitter
from trainer.data.pipeline import InputPipeline

IGNORE = 255
NUM_CLASSES = 5


def _example(index: int, height: int = 32, width: int = 32, label_value: int | None = None) -> bytes:
    """An example whose whole image has the value 10 * index (so it can be identified after the pipeline)."""
    image = np.full((height, width, 3), 10 * index, np.uint8)
    label = np.full((height, width), index % NUM_CLASSES if label_value is None else label_value, np.uint8)
    return schema.encode_example(image, label, f"example-{index:03d}.png")


def _write(directory, prefix: str, examples: list[bytes], num_files: int) -> tuple[str, ...]:
    paths = tuple(str(directory / f"{prefix}-{k}.tfrecord") for k in range(num_files))
    for k, path in enumerate(paths):
        with tf.io.TFRecordWriter(path) as writer:
            for serialized in examples[k::num_files]:
                writer.write(serialized)
    return paths


def _info(directory, num_train: int = 8, num_train_files: int = 4, eval_examples: list[bytes] | None = None):
    eval_examples = eval_examples or [_example(i) for i in range(7)]
    return DatasetInfo(
        name="toy",
        num_classes=NUM_CLASSES,
        class_names=tuple(f"c{i}" for i in range(NUM_CLASSES)),
        ignore_label=IGNORE,
        train_files=_write(directory, "train", [_example(i) for i in range(num_train)], num_train_files),
        eval_files=_write(directory, "eval", eval_examples, 2),
        num_train_examples=num_train,
        num_eval_examples=len(eval_examples),
        max_image_size=(40, 36),
    )


def _context(pipeline_id: int, num_pipelines: int = 2) -> tf.distribute.InputContext:
    return tf.distribute.InputContext(
        num_input_pipelines=num_pipelines, input_pipeline_id=pipeline_id, num_replicas_in_sync=2
    )


def _indices(images: np.ndarray) -> list[int]:
    """Recovers the example index from each image of a batch (images are constant, normalised)."""
    return [int(np.rint((image.mean() + 1.0) * 127.5 / 10.0)) for image in images]


# Scale 1 and crops the image size, so training images stay constant and identifiable.
IDENTITY_AUGMENTATION = dict(crop_size=(32, 32), min_scale=1.0, max_scale=1.0)


def test_train_dataset_shapes_dtypes_and_values(tmp_path):
    info = _info(tmp_path)
    dataset = InputPipeline(crop_size=(24, 28), shuffle_buffer=4).train_dataset(info, global_batch_size=4)
    assert dataset.element_spec == (
        tf.TensorSpec([4, 24, 28, 3], tf.float32),
        tf.TensorSpec([4, 24, 28], tf.int32),
    )
    for images, labels in dataset.take(5):
        assert -1.0 <= images.numpy().min() and images.numpy().max() <= 1.0
        assert set(np.unique(labels)) <= set(range(NUM_CLASSES)) | {IGNORE}
    options = dataset.options()
    assert options.experimental_distribute.auto_shard_policy == tf.data.experimental.AutoShardPolicy.OFF


def test_train_dataset_is_deterministic_and_seeded(tmp_path):
    info = _info(tmp_path)

    def batches(seed: int) -> list[np.ndarray]:
        pipeline = InputPipeline(crop_size=(24, 24), shuffle_buffer=8, seed=seed)
        return [images.numpy() for images, _ in pipeline.train_dataset(info, 4).take(6)]

    first, again, other = batches(0), batches(0), batches(1)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_train_dataset_per_replica_batch(tmp_path):
    info = _info(tmp_path)
    dataset = InputPipeline(**IDENTITY_AUGMENTATION).train_dataset(info, 8, _context(0, num_pipelines=1))
    assert dataset.element_spec[0].shape.as_list() == [4, 32, 32, 3]


@pytest.mark.parametrize("num_train_files, expected", [(4, "file"), (1, "element")])
def test_train_sharding_splits_examples_between_pipelines(tmp_path, caplog, num_train_files, expected):
    info = _info(tmp_path, num_train=8, num_train_files=num_train_files)
    pipeline = InputPipeline(**IDENTITY_AUGMENTATION, shuffle_buffer=8)
    seen = []
    with caplog.at_level(logging.INFO):
        for pipeline_id in range(2):
            # Two passes over this pipeline's 4 examples (per-replica batch 2).
            batches = pipeline.train_dataset(info, 4, _context(pipeline_id)).take(4)
            seen.append({index for images, _ in batches for index in _indices(images.numpy())})
    assert f"sharding by {expected}" in caplog.text
    assert len(seen[0]) == len(seen[1]) == 4
    assert seen[0] | seen[1] == set(range(8))
    if expected == "element":
        # One file holding 0..7 in order: pipeline k keeps records k, k + 2, ...
        assert seen == [{0, 2, 4, 6}, {1, 3, 5, 7}]


def test_indivisible_global_batch_names_the_binding(tmp_path):
    info = _info(tmp_path)
    with pytest.raises(
        ValueError, match=r"train\.global_batch_size: expected a multiple of the number of replicas \(2\), received 3"
    ):
        InputPipeline().train_dataset(info, 3, _context(0))
    with pytest.raises(ValueError, match=r"evaluation\.global_batch_size"):
        InputPipeline().eval_dataset(info, 3, _context(0))


def test_out_of_range_label_fails_loudly(tmp_path):
    info = _info(tmp_path)
    bad = _write(tmp_path, "bad", [_example(0), _example(1, label_value=7)], 1)
    info = DatasetInfo(**{**info.__dict__, "train_files": bad, "eval_files": bad, "num_eval_examples": 2})
    pattern = r"example-001\.png: expected label values in \[0, 5\) or the ignore label 255, received 7"
    with pytest.raises(tf.errors.InvalidArgumentError, match=pattern):
        for _ in InputPipeline(shuffle_buffer=1).train_dataset(info, 2).take(2):
            pass
    with pytest.raises(tf.errors.InvalidArgumentError, match=pattern):
        for _ in InputPipeline().eval_dataset(info, 2):
            pass


def test_eval_covers_every_example_once_over_two_pipelines(tmp_path):
    # Mixed sizes, all within max_image_size (40, 36); 7 examples, global batch 4: 2 steps, 8 slots.
    sizes = [(32, 32), (40, 36), (20, 30), (33, 17), (40, 20), (8, 36), (32, 32)]
    info = _info(tmp_path, eval_examples=[_example(i, *size) for i, size in enumerate(sizes)])
    pipeline = InputPipeline()
    assert pipeline.eval_steps(info, 4) == 2
    found, padding = [], 0
    for pipeline_id in range(2):
        dataset = pipeline.eval_dataset(info, 4, _context(pipeline_id))
        assert dataset.element_spec == (
            tf.TensorSpec([2, 40, 36, 3], tf.float32),
            tf.TensorSpec([2, 40, 36], tf.int32),
        )
        batches = list(dataset.as_numpy_iterator())
        assert len(batches) == 2  # every pipeline: eval_steps * global batch / pipelines = 4 examples
        for images, labels in batches:
            for image, label in zip(images, labels, strict=True):
                if (label == IGNORE).all():
                    padding += 1
                    assert (image == 0).all()
                    continue
                index = int(np.rint((image[0, 0, 0] + 1.0) * 127.5 / 10.0))
                height, width = sizes[index]
                found.append(index)
                # The example sits top-left, padded with ignore below and to the right.
                assert (label[:height, :width] == index % NUM_CLASSES).all()
                assert (label[height:] == IGNORE).all() and (label[:, width:] == IGNORE).all()
    assert sorted(found) == list(range(7))
    assert padding == 1


def test_eval_without_context_and_explicit_eval_size(tmp_path):
    info = _info(tmp_path)
    dataset = InputPipeline(eval_size=(48, 40)).eval_dataset(info, 3)
    assert dataset.element_spec[1].shape.as_list() == [3, 48, 40]
    labels = np.concatenate([labels for _, labels in dataset.as_numpy_iterator()])
    assert labels.shape[0] == 9 and sum((label == IGNORE).all() for label in labels) == 2


def test_eval_image_larger_than_eval_size_fails_naming_the_file(tmp_path):
    info = _info(tmp_path)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"example-000\.png.*at most 30x30.*received 32x32"):
        list(InputPipeline(eval_size=(30, 30)).eval_dataset(info, 2))


def test_eval_needs_a_size(tmp_path):
    info = DatasetInfo(**{**_info(tmp_path).__dict__, "max_image_size": None})
    with pytest.raises(ValueError, match=r"input_pipeline\.eval_size"):
        InputPipeline().eval_dataset(info, 2)


def test_input_pipeline_validates_and_is_gin_configurable():
    with pytest.raises(ValueError, match=r"input_pipeline\.crop_size"):
        InputPipeline(crop_size=(0, 8))
    with pytest.raises(ValueError, match=r"input_pipeline\.min_scale"):
        InputPipeline(min_scale=1.5, max_scale=1.0)
    with gin.unlock_config():
        gin.parse_config(
            "input_pipeline.crop_size = (64, 48)\ninput_pipeline.seed = 3\n"
            "input_pipeline.photometric_jitter = @photometric_jitter()\nphotometric_jitter.hue_delta = 0.1"
        )
    try:
        pipeline = InputPipeline()
        assert (pipeline.crop_size, pipeline.seed) == ((64, 48), 3)
        assert pipeline.photometric_jitter == PhotometricJitter(hue_delta=0.1)
        with pytest.raises(ValueError, match=r"photometric_jitter\.contrast_range: expected \(lower, upper\)"):
            PhotometricJitter(contrast_range=(1.5, 0.5))
    finally:
        gin.clear_config()


def test_pipelines_run_without_tf_data_autotuning(tmp_path):
    # Autotuning's model thread made destroying an iterator wait up to a minute at the end of every run.
    info = _info(tmp_path)
    for dataset in (InputPipeline().train_dataset(info, 2), InputPipeline().eval_dataset(info, 2)):
        assert dataset.options().autotune.enabled is False


def _batches(dataset, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(images.numpy(), labels.numpy()) for images, labels in dataset.take(count)]


@pytest.mark.parametrize(
    "num_train_files, pipeline_id, num_pipelines",
    [(4, 0, 1), (1, 1, 2), (4, 1, 2)],  # one pipeline; element sharding; file sharding
)
def test_resumed_stream_equals_the_uninterrupted_one(tmp_path, num_train_files, pipeline_id, num_pipelines):
    # 8 examples, per-replica batch 2 => 4 steps per epoch with one pipeline, 2 with two.
    info = _info(tmp_path, num_train=8, num_train_files=num_train_files)
    pipeline = InputPipeline(crop_size=(24, 24), shuffle_buffer=3, seed=7)
    context = _context(pipeline_id, num_pipelines) if num_pipelines > 1 else None
    global_batch = 2 * num_pipelines
    reference = _batches(pipeline.train_dataset(info, global_batch, context), 24)
    for start_step in (1, 4, 5, 17):  # within the first epoch, at an epoch boundary, several epochs on
        resumed = _batches(pipeline.train_dataset(info, global_batch, context, start_step=start_step), 3)
        for (images, labels), (expected_images, expected_labels) in zip(resumed, reference[start_step:], strict=False):
            np.testing.assert_array_equal(images, expected_images)
            np.testing.assert_array_equal(labels, expected_labels)


def test_every_epoch_is_a_new_permutation_of_all_examples(tmp_path):
    info = _info(tmp_path, num_train=8, num_train_files=3)
    epochs = []
    for shuffle_buffer in (8, 3):  # a full reshuffle, then windows of 3
        pipeline = InputPipeline(**IDENTITY_AUGMENTATION, shuffle_buffer=shuffle_buffer, flip=False)
        order = [i for images, _ in pipeline.train_dataset(info, 2).take(16) for i in _indices(images.numpy())]
        epochs = [order[k : k + 8] for k in range(0, 32, 8)]
        assert all(sorted(epoch) == list(range(8)) for epoch in epochs), epochs
        assert len({tuple(epoch) for epoch in epochs}) == 4, epochs


def test_cache_reads_the_files_once(tmp_path):
    info = _info(tmp_path, num_train=8, num_train_files=2)
    pipeline = InputPipeline(**IDENTITY_AUGMENTATION, shuffle_buffer=8, cache=True, flip=False)
    iterator = iter(pipeline.train_dataset(info, 2))
    first_epoch = [i for _ in range(4) for i in _indices(next(iterator)[0].numpy())]
    for path in info.train_files:
        os.remove(path)
    later = [i for _ in range(8) for i in _indices(next(iterator)[0].numpy())]
    assert sorted(first_epoch) == sorted(later[:8]) == sorted(later[8:]) == list(range(8))
    assert later[:8] != later[8:]


def test_tf_data_options_are_configurable(tmp_path):
    info = _info(tmp_path)
    pipeline = InputPipeline(
        private_threadpool_size=2, autotune=True, autotune_ram_budget_mb=64, num_parallel_calls=1, prefetch_batches=1
    )
    for dataset in (pipeline.train_dataset(info, 2), pipeline.eval_dataset(info, 2)):
        options = dataset.options()
        assert options.threading.private_threadpool_size == 2
        assert options.autotune.enabled is True and options.autotune.ram_budget == 64 * 2**20
    assert len(_batches(pipeline.train_dataset(info, 2), 2)) == 2


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(scale_step=-0.25), r"input_pipeline\.scale_step"),
        (dict(pad_value=(0.0, 0.0)), r"input_pipeline\.pad_value: expected one value or three"),
        (dict(pad_value=2.0), r"input_pipeline\.pad_value.*\[-1, 1\], received 2\.0"),
        (dict(interleave_cycle_length=0), r"input_pipeline\.interleave_cycle_length"),
        (dict(num_parallel_calls=0), r"input_pipeline\.num_parallel_calls"),
        (dict(autotune_ram_budget_mb=128), r"autotune_ram_budget_mb: only used with input_pipeline\.autotune"),
        (dict(tf_data_service_address="localhost:5000"), r"tf_data_service_address: expected .*'grpc://host:port'"),
    ],
)
def test_input_pipeline_validates_new_settings(overrides, message):
    with pytest.raises(ValueError, match=message):
        InputPipeline(**overrides)


def test_negative_start_step_is_an_error(tmp_path):
    with pytest.raises(ValueError, match=r"start_step: expected an integer >= 0, received -1"):
        InputPipeline().train_dataset(_info(tmp_path), 2, start_step=-1)


def test_per_channel_pad_value_in_train_and_eval(tmp_path):
    info = _info(tmp_path)
    pad = (-0.5, 0.25, 0.75)
    pipeline = InputPipeline(crop_size=(40, 40), min_scale=1.0, max_scale=1.0, pad_value=pad, eval_size=(48, 40))
    for dataset in (pipeline.train_dataset(info, 2), pipeline.eval_dataset(info, 2)):
        images, labels = next(iter(dataset))
        padded = labels.numpy() == IGNORE
        assert padded.any()
        np.testing.assert_array_equal(images.numpy()[padded], np.broadcast_to(pad, (padded.sum(), 3)))


def test_tf_data_service_serves_the_training_batches(tmp_path):
    info = _info(tmp_path, num_train=8, num_train_files=2)
    dispatcher = tf.data.experimental.service.DispatchServer()
    address = dispatcher.target
    worker = tf.data.experimental.service.WorkerServer(
        tf.data.experimental.service.WorkerConfig(dispatcher_address=address.split("://")[1])
    )
    try:
        pipeline = InputPipeline(**IDENTITY_AUGMENTATION, shuffle_buffer=8, tf_data_service_address=address)
        # Two trainer pipelines read one job: each batch goes to one of them, and the examples are all seen.
        dataset = pipeline.train_dataset(info, 4, _context(0))
        assert dataset.element_spec[0].shape.as_list() == [2, 32, 32, 3]
        seen = [i for images, _ in dataset.take(8) for i in _indices(images.numpy())]
        assert set(seen) == set(range(8)) and len(seen) == 16
    finally:
        worker.stop()
        dispatcher.stop()


# Saturated, far-apart colours: each class keeps a colour of its own through brightness, contrast,
# saturation and hue changes, which act on every pixel alike.
CLASS_COLOURS = np.array([[255, 0, 0], [0, 200, 0], [0, 0, 255], [230, 230, 0], [0, 220, 220]], np.uint8)


def _colour_coded_example(index: int, size: int = 48) -> bytes:
    rng = np.random.default_rng(index)
    label = np.kron(rng.integers(0, NUM_CLASSES, size=(size // 8, size // 8)), np.ones((8, 8), np.int64))
    label = label.astype(np.uint8)
    label[:, :4] = IGNORE
    image = CLASS_COLOURS[np.minimum(label, NUM_CLASSES - 1)]
    image[label == IGNORE] = 128
    return schema.encode_example(image, label, f"coded-{index}.png")


def _interior(label: np.ndarray, radius: int = 1) -> np.ndarray:
    """Pixels whose (2 radius + 1)^2 neighbourhood has a single label (away from bilinear blending)."""
    padded = np.pad(label.astype(np.int32), radius, constant_values=-1)
    same = np.ones(label.shape, bool)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            same &= padded[dy : dy + label.shape[0], dx : dx + label.shape[1]] == label
    return same


@pytest.mark.parametrize("jitter", [False, True])
def test_colour_coded_labels_stay_aligned_through_every_augmentation(tmp_path, jitter):
    train_files = _write(tmp_path, "coded", [_colour_coded_example(i) for i in range(6)], 2)
    info = DatasetInfo(**{**_info(tmp_path).__dict__, "train_files": train_files, "num_train_examples": 6})
    pipeline = InputPipeline(
        crop_size=(40, 40),
        min_scale=0.75,
        max_scale=1.5,
        scale_step=0.25,
        flip=True,
        pad_value=(-1.0, 1.0, -1.0),
        photometric_jitter=PhotometricJitter() if jitter else None,
        shuffle_buffer=6,
    )
    expected = CLASS_COLOURS / 127.5 - 1.0
    checked = 0
    for images, labels in pipeline.train_dataset(info, 2).take(8).as_numpy_iterator():
        for image, label in zip(images, labels, strict=True):
            interior = _interior(label)
            medians = {}
            for class_id in set(np.unique(label[interior])) - {IGNORE}:
                colours = image[interior & (label == class_id)]
                median = np.median(colours, axis=0)
                # Every interior pixel of a class has that class's colour: image and label moved together.
                assert np.abs(colours - median).max() < 0.02, (class_id, np.abs(colours - median).max())
                if not jitter:
                    np.testing.assert_allclose(median, expected[class_id], atol=0.01)
                medians[class_id] = median
                checked += 1
            for a in medians:
                for b in medians:
                    if a < b:
                        assert np.abs(medians[a] - medians[b]).max() > 0.1, (a, b)
    assert checked > 20
