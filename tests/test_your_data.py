"""Your own data: 0/255 binary masks stop with the fix and train after it; label counts; class weights."""

import json
import os

import gin
import numpy as np
import pytest
from PIL import Image

from tests.helpers import REPO_ROOT, one_device_strategy
from trainer import train_lib
from trainer.common.errors import UserInputError
from trainer.core import class_weights, losses
from trainer.data import info as info_lib
from trainer.data import tfrecord
from trainer.data.convert import folder, writer

pytestmark = pytest.mark.usefixtures("clear_gin")

SIZE = 32


def _toy_folder(root, num_images=48, seed=0):
    """Bright rectangles (mask 255) on dark noise (mask 0): learnable from brightness alone."""
    rng = np.random.default_rng(seed)
    for k in range(num_images):
        image = rng.integers(0, 90, size=(SIZE, SIZE, 3)).astype(np.uint8)
        mask = np.zeros((SIZE, SIZE), np.uint8)
        for _ in range(rng.integers(1, 3)):
            top, left = rng.integers(0, SIZE - 8, size=2)
            height, width = rng.integers(4, 12, size=2)
            mask[top : top + height, left : left + width] = 255
        image[mask == 255] = rng.integers(150, 256, size=(int((mask == 255).sum()), 3))
        os.makedirs(os.path.join(root, "images"), exist_ok=True)
        os.makedirs(os.path.join(root, "masks"), exist_ok=True)
        Image.fromarray(image).save(os.path.join(root, "images", f"{k:03d}.png"))
        Image.fromarray(mask).save(os.path.join(root, "masks", f"{k:03d}.png"))
    return root


def test_0_255_masks_stop_the_converter_with_the_fix(tmp_path):
    source = folder.folder_source(_toy_folder(str(tmp_path / "src"), 6), ("background", "crack"))
    with pytest.raises(UserInputError) as error:
        writer.write_dataset(source, str(tmp_path / "out"))
    message = str(error.value)
    assert "only the values 0 and 255" in message and "ignore label" in message and "'crack'" in message
    assert "--binary" in message and "--label_map=255:1" in message
    assert not os.path.exists(tmp_path / "out")


def test_label_counts_in_the_json_and_a_warning_for_a_missing_class(tmp_path, caplog):
    root = _toy_folder(str(tmp_path / "src"), 6)
    source = folder.folder_source(root, ("background", "crack", "hole"), label_map={255: 1})
    info, _ = writer.write_dataset(source, str(tmp_path / "out"))
    train = info_lib.load(str(tmp_path / "out" / info_lib.INFO_FILENAME)).train_split()
    masks = [np.asarray(Image.open(os.path.join(root, "masks", os.path.basename(key)))) for key in _keys(train)]
    assert train.class_pixels == (sum((m == 0).sum() for m in masks), sum((m == 255).sum() for m in masks), 0)
    assert train.class_images == (len(masks), len(masks), 0) and train.ignored_pixels == 0
    assert "no labelled pixel of 1 class(es): hole" in caplog.text


def _keys(split):
    import tensorflow as tf

    from trainer.data import schema

    return [
        tf.io.parse_single_example(r, schema.FEATURE_SPEC)[schema.IMAGE_FILENAME].numpy().decode()
        for r in tf.data.TFRecordDataset(list(split.files))
    ]


def test_tfrecord_dataset_stops_on_0_255_masks(tmp_path):
    import tensorflow as tf

    from trainer.data import schema

    path = str(tmp_path / "train.tfrecord")
    rng = np.random.default_rng(0)
    with tf.io.TFRecordWriter(path) as records:
        for k in range(3):
            label = np.where(rng.random((8, 8)) < 0.3, 255, 0).astype(np.uint8)
            records.write(schema.encode_example(np.zeros((8, 8, 3), np.uint8), label, f"{k}.png"))
    with pytest.raises(UserInputError, match="tfrecord_dataset.train_pattern.*only the values 0 and 255.*--binary"):
        tfrecord.tfrecord_dataset(path, path, num_classes=2, class_names=("background", "crack"))


def test_class_weights_from_pixel_counts():
    counts = (900, 90, 10, 0)
    inverse = class_weights.weights_from_counts("inverse_frequency", counts)
    np.testing.assert_allclose(inverse, [1000 / 900 / 3, 1000 / 90 / 3, 1000 / 10 / 3, 0.0])
    median = class_weights.weights_from_counts("median_frequency", counts)
    np.testing.assert_allclose(median, [0.09 / 0.9, 1.0, 0.09 / 0.01, 0.0])


def test_class_weight_rule_needs_pixel_counts():
    info = info_lib.DatasetInfo("plain", 2, ("a", "b"), 255, ("t",), ("e",), 1, 1)
    with pytest.raises(UserInputError, match="loss.class_weights = 'inverse_frequency'.*pixel counts"):
        class_weights.resolve(losses.SegmentationLoss(class_weights="inverse_frequency"), info)


# The binary recipe with a thinner model, 32x32 crops and 60 steps.
TOY_RUN = (
    "input_pipeline.crop_size = (32, 32)",
    "input_pipeline.shuffle_buffer = 64",
    "ResNet.base_filters = 4",
    "ResNet.output_stride = 8",
    "DeepLabV3Plus.aspp_filters = 16",
    "DeepLabV3Plus.low_level_filters = 8",
    "DeepLabV3Plus.decoder_filters = 16",
    "train.steps = 60",
    "train.global_batch_size = 8",
    "train.steps_per_loop = 20",
    "train.checkpoint_every_steps = 60",
    "evaluation.every_steps = 60",
    "optimizer.warmup_steps = 5",
    "optimizer.learning_rate = 0.01",
    "loss.class_weights = 'inverse_frequency'",
    "observe.peak_matmul_size = 256",
    "batch_norm.momentum = 0.9",  # 60 steps: the moving statistics must settle within them
)


@pytest.mark.slow  # 60 training steps: about 40 s on 2 shared CPU cores
def test_binary_folder_trains_after_the_fix_to_a_foreground_f1_above_one_half(tmp_path):
    source = folder.folder_source(_toy_folder(str(tmp_path / "src")), ("background", "crack"), label_map={255: 1})
    data_dir = str(tmp_path / "data")
    writer.write_dataset(source, data_dir)
    gin.clear_config()
    gin.parse_config_files_and_bindings(
        [os.path.join(REPO_ROOT, "configs", "binary_folder.gin")],
        [f"converted_dataset.data_dir = '{data_dir}'", *TOY_RUN],
    )
    report = train_lib.run("train_and_eval", str(tmp_path / "run"), strategy=one_device_strategy())
    print("toy foreground F1", report["per_class_f1"]["crack"], "mF1", report["mf1"])
    assert report["per_class_f1"]["crack"] > 0.5
    with open(tmp_path / "run" / "best" / "info.json") as f:
        assert json.load(f)["metric"] == "mf1"


def test_binary_switch_of_the_converter_maps_255_to_class_1(tmp_path):
    from absl import flags, logging

    from trainer.data.convert import cli

    root = _toy_folder(str(tmp_path / "src"), 6)
    # Unparsing resets absl's logger to WARNING, which would hide INFO logs from later tests' caplog.
    level = logging.get_absl_logger().level
    flags.FLAGS(["convert", f"--source_dir={root}", f"--output_dir={tmp_path / 'out'}", "--binary", "--num_workers=1"])
    try:
        info, _ = cli.convert("folder")
    finally:
        flags.FLAGS.unparse_flags()
        logging.get_absl_logger().setLevel(level)
    assert info.class_names == ("background", "foreground")
    assert info.train_split().class_pixels[1] > 0 and info.train_split().ignored_pixels == 0
