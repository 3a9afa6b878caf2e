"""Round trips of every converter on fake source trees: TFRecords equal the sources pixel for pixel."""

import importlib.util
import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from trainer.common.errors import UserInputError
from trainer.data import info as info_lib
from trainer.data import schema
from trainer.data.convert import ade20k, cityscapes, folder, reading, tfds_dataset, voc, writer
from trainer.data.tfrecord import converted_dataset


def read_split(files) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{image/filename: (image, label)} of every record in `files`, parsed as the trainer parses them."""
    records = {}
    for serialized in tf.data.TFRecordDataset(list(files)):
        image, label, filename = schema.parse_example(serialized)
        records[filename.numpy().decode()] = (image.numpy(), label.numpy())
    return records


def decode_source(path: str) -> np.ndarray:
    """The source image decoded by TensorFlow's own decoders (what the trainer sees of a kept JPEG)."""
    return tf.io.decode_image(reading.read_bytes(path), channels=3, expand_animations=False).numpy()


def assert_round_trip(info: info_lib.DatasetInfo, expected: dict) -> None:
    """Every expected split is in `info` and its records equal the sources pixel for pixel."""
    assert sorted(split.name for split in info.splits) == sorted(expected)
    for split_name, examples in expected.items():
        split = info.split(split_name)
        records = read_split(split.files)
        assert sorted(records) == sorted(examples), split_name
        assert split.num_examples == len(examples) and split.num_skipped == 0
        for key, (image_path, label) in examples.items():
            image, stored_label = records[key]
            np.testing.assert_array_equal(image, decode_source(image_path), err_msg=key)
            np.testing.assert_array_equal(stored_label, label, err_msg=key)


def test_voc_round_trip_splits_and_json(fake_voc, tmp_path):
    output = str(tmp_path / "out")
    info, reports = writer.write_dataset(voc.voc_source(fake_voc.root), output, num_shards=2)
    assert_round_trip(info, fake_voc.expected)
    written = [(r.name, r.num_written, r.skipped) for r in reports]
    assert written == [("train", 3, []), ("val", 2, []), ("trainval", 5, [])]
    # The JSON trains on train, evaluates on val, pads eval images to val's largest size (48x40 here).
    loaded = info_lib.load(os.path.join(output, info_lib.INFO_FILENAME))
    assert loaded == info
    assert (loaded.num_train_examples, loaded.num_eval_examples) == (3, 2)
    assert loaded.train_files == loaded.split("train").files and len(loaded.train_files) == 2
    assert loaded.class_names == voc.CLASS_NAMES and loaded.ignore_label == 255
    assert loaded.palette[15] == (192, 128, 128)  # VOC's colour for "person"
    assert loaded.max_image_size == (48, 40)
    val = loaded.split("val")
    assert val.min_image_size == (24, 24) and sorted(val.image_sizes) == [(24, 40, 1), (48, 24, 1)]
    # VOC's JPEGs are stored as they are: no re-encoding, the same bytes.
    record = tf.train.Example.FromString(next(iter(tf.data.TFRecordDataset(loaded.train_files))).numpy())
    assert record.features.feature[schema.IMAGE_FORMAT].bytes_list.value[0] == b"jpeg"
    stored = json.loads((tmp_path / "out" / info_lib.INFO_FILENAME).read_text())
    assert stored["train_files"] == ["train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord"]
    # No staging directory is left beside the output.
    assert sorted(os.listdir(tmp_path)) == ["VOCdevkit", "out"]


def test_voc_trainaug_from_sbd_pngs(fake_sbd_png, tmp_path):
    tree, sbd_dir = fake_sbd_png
    info, _ = writer.write_dataset(voc.voc_source(tree.root, sbd_dir=sbd_dir), str(tmp_path / "out"))
    assert_round_trip(info, tree.expected)
    assert info.num_train_examples == 5 and info.train_files == info.split("trainaug").files


@pytest.mark.skipif(importlib.util.find_spec("scipy") is not None, reason="scipy is installed")
def test_voc_sbd_mat_files_without_scipy_say_how_to_fix(fake_voc, tmp_path):
    (tmp_path / "sbd" / "cls").mkdir(parents=True)
    (tmp_path / "sbd" / "cls" / "2010_000001.mat").write_bytes(b"MATLAB 5.0 MAT-file")
    with pytest.raises(UserInputError, match=r"--sbd_dir: reading SBD's \.mat masks .* needs scipy"):
        voc.voc_source(fake_voc.root, sbd_dir=str(tmp_path / "sbd"))


def test_voc_sbd_mat_files_with_scipy(fake_voc, fake_files, tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    label = np.arange(32 * 40, dtype=np.uint8).reshape(32, 40) % 21
    voc_root = tmp_path / "VOCdevkit" / "VOC2012"
    image = fake_files.random_image(np.random.default_rng(0), 32, 40)
    fake_files.save_image(str(voc_root / "JPEGImages" / "2010_000001.jpg"), image)
    (tmp_path / "sbd" / "cls").mkdir(parents=True)
    scipy_io.savemat(str(tmp_path / "sbd" / "cls" / "2010_000001.mat"), {"GTcls": {"Segmentation": label}})
    info, _ = writer.write_dataset(voc.voc_source(fake_voc.root, sbd_dir=str(tmp_path / "sbd")), str(tmp_path / "o"))
    records = read_split(info.split("trainaug").files)
    np.testing.assert_array_equal(records["2010_000001.jpg"][1], label)


def test_voc_layout_errors_name_what_is_missing(tmp_path):
    with pytest.raises(UserInputError, match=r"--source_dir: expected a PASCAL VOC 2012 directory"):
        voc.voc_source(str(tmp_path))


def test_cityscapes_maps_label_ids_to_train_ids(fake_cityscapes, tmp_path):
    info, _ = writer.write_dataset(cityscapes.cityscapes_source(fake_cityscapes.root), str(tmp_path / "out"))
    assert_round_trip(info, fake_cityscapes.expected)
    assert info.num_classes == 19 and info.class_names[0] == "road" and info.palette[0] == (128, 64, 128)
    # The mapping itself: road (7) -> 0, bicycle (33) -> 18, unlabeled (0), parking (9), caravan (29) -> ignore.
    table = reading.lookup_table(cityscapes.LABEL_ID_TO_TRAIN_ID, default=255)
    assert (table[7], table[33], table[0], table[9], table[29]) == (0, 18, 255, 255, 255)
    assert len(cityscapes.LABEL_ID_TO_TRAIN_ID) == 19


def test_ade20k_shifts_labels_and_ignores_zero(fake_ade20k, tmp_path):
    info, _ = writer.write_dataset(ade20k.ade20k_source(fake_ade20k.root), str(tmp_path / "out"))
    assert_round_trip(info, fake_ade20k.expected)
    assert info.num_classes == 150 and info.class_names[:3] == ("wall", "building", "sky")


def test_folder_with_split_subfolders(fake_folder, tmp_path):
    source = folder.folder_source(fake_folder.root, ("bg", "road", "car"), name="mine")
    info, _ = writer.write_dataset(source, str(tmp_path / "out"))
    assert_round_trip(info, fake_folder.expected)
    assert info.name == "mine" and info.num_classes == 3


def test_folder_flat_is_split_with_a_seed_and_label_map(fake_files, tmp_path):
    rng = np.random.default_rng(5)
    for k in range(10):
        fake_files.save_image(str(tmp_path / "src" / "images" / f"{k}.png"), fake_files.random_image(rng, 16, 16))
        mask = np.full((16, 16), 255 * (k % 2), np.uint8)
        fake_files.save_label_png(str(tmp_path / "src" / "masks" / f"{k}.png"), mask)
    source = folder.folder_source(str(tmp_path / "src"), ("background", "object"), label_map={255: 1}, val_fraction=0.3)
    assert [(s.name, s.num_examples) for s in source.splits] == [("train", 7), ("val", 3)]
    info, _ = writer.write_dataset(source, str(tmp_path / "out"))
    records = {**read_split(info.split("train").files), **read_split(info.split("val").files)}
    assert sorted(records) == sorted(os.path.join("images", f"{k}.png") for k in range(10))
    for key, (_, label) in records.items():
        k = int(os.path.basename(key)[:-4])
        assert (label == k % 2).all()
    again = folder.folder_source(str(tmp_path / "src"), ("background", "object"), val_fraction=0.3)
    assert [e.key for e in again.splits[1].examples] == [e.key for e in source.splits[1].examples]


def test_folder_class_file_with_colours(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("# name,r,g,b\nbackground,0,0,0\nroad,128,64,128\n")
    assert folder.read_class_file(str(path)) == (("background", "road"), ((0, 0, 0), (128, 64, 128)))
    path.write_text("background,0,0,0\nroad\n")
    with pytest.raises(UserInputError, match="expected a colour on every line or on none"):
        folder.read_class_file(str(path))


def _pets_as_dataset(self, split, *args, **kwargs):
    """Deterministic fake oxford_iiit_pet examples: trimap masks of 1 (pet), 2 (background), 3 (outline)."""
    del self, args, kwargs
    offset = {"train": 0, "test": 10}[split]

    def generate():
        for k in range(3):
            rng = np.random.default_rng(offset + k)
            mask = rng.integers(1, 4, size=(20 + k, 24, 1)).astype(np.uint8)
            yield {
                "image": rng.integers(0, 256, size=(20 + k, 24, 3)).astype(np.uint8),
                "segmentation_mask": mask,
                "file_name": f"{split}_{k}.jpg",
                "label": 0,
                "species": 0,
                "head_bbox": np.zeros(4, np.float32),
            }

    return tf.data.Dataset.from_generator(
        generate,
        output_signature={
            "image": tf.TensorSpec([None, None, 3], tf.uint8),
            "segmentation_mask": tf.TensorSpec([None, None, 1], tf.uint8),
            "file_name": tf.TensorSpec([], tf.string),
            "label": tf.TensorSpec([], tf.int64),
            "species": tf.TensorSpec([], tf.int64),
            "head_bbox": tf.TensorSpec([4], tf.float32),
        },
    )


def test_tfds_oxford_iiit_pet_round_trip_with_label_map(tmp_path):
    with tfds.testing.mock_data(as_dataset_fn=_pets_as_dataset):
        source = tfds_dataset.tfds_source(
            "oxford_iiit_pet", ("background", "pet"), splits=("train", "test"), label_map={1: 1, 2: 0, 3: 255}
        )
        info, reports = writer.write_dataset(source, str(tmp_path / "out"))
    assert [(r.name, r.num_written) for r in reports] == [("train", 3), ("test", 3)]
    assert info.num_eval_examples == 3 and info.eval_files == info.split("test").files
    for split, offset in (("train", 0), ("test", 10)):
        records = read_split(info.split(split).files)
        assert sorted(records) == [f"{split}_{k}.jpg" for k in range(3)]
        for k in range(3):
            rng = np.random.default_rng(offset + k)
            mask = rng.integers(1, 4, size=(20 + k, 24, 1)).astype(np.uint8)[..., 0]
            image = rng.integers(0, 256, size=(20 + k, 24, 3)).astype(np.uint8)
            stored_image, stored_label = records[f"{split}_{k}.jpg"]
            np.testing.assert_array_equal(stored_image, image)
            np.testing.assert_array_equal(stored_label, np.choose(mask - 1, [1, 0, 255]).astype(np.uint8))


def test_tfds_unknown_feature_lists_the_features(tmp_path):
    with tfds.testing.mock_data(as_dataset_fn=_pets_as_dataset):
        with pytest.raises(UserInputError, match=r"--mask_feature: .*'segmentation_mask'.*received 'mask'"):
            tfds_dataset.tfds_source("oxford_iiit_pet", ("bg", "pet"), mask_feature="mask", splits=("train",))


def test_converted_dataset_reads_the_json_and_picks_other_splits(fake_voc, tmp_path):
    output = str(tmp_path / "out")
    writer.write_dataset(voc.voc_source(fake_voc.root), output)
    info = converted_dataset(data_dir=output)
    assert (info.num_train_examples, info.num_eval_examples) == (3, 2)
    trainval = converted_dataset(data_dir=output, train_split="trainval")
    assert trainval.num_train_examples == 5 and trainval.train_files == info.split("trainval").files
    with pytest.raises(UserInputError, match=r"expected a split in \['train', 'val', 'trainval'\], received 'test'"):
        converted_dataset(data_dir=output, eval_split="test")
    with pytest.raises(UserInputError, match=r"converted_dataset\.data_dir"):
        converted_dataset(data_dir=str(tmp_path / "nothing"))
