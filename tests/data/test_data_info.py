"""Tests for trainer.data.info and trainer.data.tfrecord: DatasetInfo, its JSON file, TFRecord globbing."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from trainer.data import info as info_lib
from trainer.data import schema
from trainer.data.tfrecord import tfrecord_dataset


def _info(**overrides) -> info_lib.DatasetInfo:
    fields = dict(
        name="toy",
        num_classes=3,
        class_names=("a", "b", "c"),
        ignore_label=255,
        train_files=("/data/train-0.tfrecord",),
        eval_files=("/data/eval-0.tfrecord",),
        num_train_examples=10,
        num_eval_examples=4,
        max_image_size=(32, 48),
    )
    fields.update(overrides)
    return info_lib.DatasetInfo(**fields)


def _write_records(path: str, count: int) -> None:
    image = np.zeros((8, 8, 3), np.uint8)
    label = np.zeros((8, 8), np.uint8)
    with tf.io.TFRecordWriter(path) as writer:
        for index in range(count):
            writer.write(schema.encode_example(image, label, f"{index}.png"))


def test_save_and_load_round_trip_with_relative_paths(tmp_path):
    info = _info(
        train_files=(str(tmp_path / "train-0.tfrecord"), str(tmp_path / "train-1.tfrecord")),
        eval_files=("/elsewhere/eval.tfrecord",),
    )
    path = str(tmp_path / info_lib.INFO_FILENAME)
    info_lib.save(info, path)
    stored = json.loads((tmp_path / info_lib.INFO_FILENAME).read_text())
    assert stored["train_files"] == ["train-0.tfrecord", "train-1.tfrecord"]
    assert stored["eval_files"] == ["/elsewhere/eval.tfrecord"]
    assert info_lib.load(path) == info

    # The directory can move: relative files resolve against the JSON's new location.
    moved = tmp_path / "moved"
    os.rename(tmp_path / info_lib.INFO_FILENAME, tmp_path / "tmp.json")
    moved.mkdir()
    os.rename(tmp_path / "tmp.json", moved / info_lib.INFO_FILENAME)
    loaded = info_lib.load(str(moved / info_lib.INFO_FILENAME))
    assert loaded.train_files == (str(moved / "train-0.tfrecord"), str(moved / "train-1.tfrecord"))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(num_classes=0, class_names=()), r"num_classes: expected a positive integer, received 0"),
        (dict(class_names=("a", "b")), "expected 3 class_names"),
        (dict(ignore_label=2), r"expected ignore_label outside the class ids \[0, 3\), received 2"),
        (dict(train_files=()), "expected at least one file in train_files"),
        (dict(num_eval_examples=0), "num_eval_examples: expected a positive integer"),
        (dict(max_image_size=(0, 4)), r"max_image_size\[0\]: expected a positive integer, received 0"),
    ],
)
def test_dataset_info_validates(overrides, message):
    with pytest.raises(ValueError, match=message):
        _info(**overrides)


def test_tfrecord_dataset_globs_and_counts(tmp_path):
    _write_records(str(tmp_path / "train-0.tfrecord"), 3)
    _write_records(str(tmp_path / "train-1.tfrecord"), 2)
    _write_records(str(tmp_path / "extra.tfrecord"), 4)
    _write_records(str(tmp_path / "eval-0.tfrecord"), 5)
    info = tfrecord_dataset(
        train_pattern=f"{tmp_path}/train-*.tfrecord, {tmp_path}/extra.tfrecord",
        eval_pattern=f"{tmp_path}/eval-*",
        num_classes=4,
        max_image_size=[8, 8],
    )
    assert info.num_train_examples == 9 and info.num_eval_examples == 5
    assert len(info.train_files) == 3 and info.train_files == tuple(sorted(info.train_files))
    assert info.class_names == ("class_0", "class_1", "class_2", "class_3")
    assert info.max_image_size == (8, 8)


def test_tfrecord_dataset_empty_pattern_names_the_binding(tmp_path):
    _write_records(str(tmp_path / "eval-0.tfrecord"), 1)
    with pytest.raises(ValueError, match=r"tfrecord_dataset\.train_pattern.*nothing-\*"):
        tfrecord_dataset(train_pattern=f"{tmp_path}/nothing-*", eval_pattern=f"{tmp_path}/eval-*", num_classes=2)


def test_palette_and_splits_round_trip_and_old_json_still_loads(tmp_path):
    split = info_lib.SplitInfo(
        name="val",
        files=(str(tmp_path / "val-0.tfrecord"),),
        num_examples=4,
        num_skipped=1,
        min_image_size=(16, 20),
        max_image_size=(32, 48),
        image_sizes=((32, 48, 3), (16, 20, 1)),
    )
    info = _info(palette=((0, 0, 0), (128, 0, 0), (0, 128, 0)), splits=(split,))
    path = str(tmp_path / info_lib.INFO_FILENAME)
    info_lib.save(info, path)
    stored = json.loads((tmp_path / info_lib.INFO_FILENAME).read_text())
    assert stored["palette"] == [[0, 0, 0], [128, 0, 0], [0, 128, 0]]
    assert stored["splits"][0]["files"] == ["val-0.tfrecord"]
    assert "[128, 0, 0]" in (tmp_path / info_lib.INFO_FILENAME).read_text()  # one line per colour
    loaded = info_lib.load(path)
    assert loaded == info and loaded.split("val") == split
    # A JSON written before palette and splits existed.
    del stored["palette"], stored["splits"]
    (tmp_path / info_lib.INFO_FILENAME).write_text(json.dumps(stored))
    assert info_lib.load(path) == _info()


@pytest.mark.parametrize(
    "palette, message",
    [
        (((0, 0, 0), (1, 1, 1)), "expected a palette of 3 colours"),
        (((0, 0, 0), (1, 1, 1), (256, 0, 0)), r"expected palette colours \(r, g, b\) of ints in \[0, 255\]"),
    ],
)
def test_palette_is_validated(palette, message):
    with pytest.raises(ValueError, match=message):
        _info(palette=palette)
    assert _info(palette=np.zeros((3, 3), np.int64)).palette == ((0, 0, 0),) * 3
