"""More than RGB, more than 8 bits: 4-band uint16 TIFFs and 16-bit grey PNGs convert, train and evaluate."""

import dataclasses
import os

import gin
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tests.helpers import REPO_ROOT, one_device_strategy
from trainer import train_lib
from trainer.common.errors import UserInputError
from trainer.data import info as info_lib
from trainer.data import records, schema
from trainer.data.convert import folder, writer

pytestmark = pytest.mark.usefixtures("clear_gin")
SIZE = 32


def _tiles(root, channels, save, num_images=8, seed=0):
    """uint16 images whose first band is bright (around 40000) on the class-1 square, dark elsewhere."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for k in range(num_images):
        mask = np.zeros((SIZE, SIZE), np.uint8)
        top, left = rng.integers(0, SIZE - 12, size=2)
        mask[top : top + 12, left : left + 12] = 1
        image = rng.integers(1000, 9000, size=(SIZE, SIZE, channels)).astype(np.uint16)
        image[..., 0][mask == 1] += 30000
        os.makedirs(os.path.join(root, "images"), exist_ok=True)
        os.makedirs(os.path.join(root, "masks"), exist_ok=True)
        save(os.path.join(root, "images", f"{k:02d}"), image)
        Image.fromarray(mask).save(os.path.join(root, "masks", f"{k:02d}.png"))
        arrays[f"{k:02d}"] = image
    return arrays


def _save_tiff_planar(path, image):
    tifffile = pytest.importorskip("tifffile")
    tifffile.imwrite(path + ".tif", np.moveaxis(image, -1, 0))  # bands first, as multi-page TIFFs store them


def _save_png16(path, image):
    tf.io.write_file(path + ".png", tf.io.encode_png(image))


def _decoded(info, files=None):
    out = {}
    for serialized in tf.data.TFRecordDataset(list(files or info.train_files + info.eval_files)):
        image, _, name = schema.parse_example(serialized, info.image_channels, info.image_dtype)
        out[os.path.splitext(os.path.basename(name.numpy().decode()))[0]] = image.numpy()
    return out


def test_four_band_uint16_tiffs_convert_exactly_with_channel_statistics(tmp_path):
    arrays = _tiles(str(tmp_path / "src"), 4, _save_tiff_planar)
    source = folder.folder_source(
        str(tmp_path / "src"), ("background", "roof"), image_channels=4, image_dtype="uint16", val_fraction=0.25
    )
    info, _ = writer.write_dataset(source, str(tmp_path / "out"))
    info = info_lib.load(str(tmp_path / "out" / info_lib.INFO_FILENAME))
    assert (info.image_channels, info.image_dtype) == (4, "uint16")
    decoded = _decoded(info)
    for key, image in arrays.items():
        np.testing.assert_array_equal(decoded[key], image)
    train = np.stack(list(_decoded(info, info.train_files).values())).reshape(-1, 4).astype(np.float64)
    np.testing.assert_allclose(info.channel_mean, train.mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(info.channel_std, train.std(axis=0), rtol=1e-6)


def test_16_bit_grey_pngs_convert_and_rgb_uint8_records_are_refused_as_such(tmp_path):
    arrays = _tiles(str(tmp_path / "src"), 1, _save_png16, num_images=4)
    source = folder.folder_source(str(tmp_path / "src"), ("background", "cell"), image_channels=1, image_dtype="uint16")
    info, _ = writer.write_dataset(source, str(tmp_path / "out"))
    for key, image in _decoded(info).items():
        np.testing.assert_array_equal(image, arrays[key])
    with pytest.raises(
        UserInputError, match="expected an RGB image of uint8, received a 16-bit PNG.*--image_dtype=uint16"
    ):
        writer.write_dataset(folder.folder_source(str(tmp_path / "src"), ("background", "cell")), str(tmp_path / "o2"))
    rgb = dataclasses.replace(info, image_channels=3, image_dtype="uint8", channel_mean=None, channel_std=None)
    serialized = next(iter(tf.data.TFRecordDataset(list(info.train_files))))
    with pytest.raises(tf.errors.InvalidArgumentError, match="expected an image of 3 channels of uint8"):
        records.parse_and_check(serialized, rgb)


@pytest.mark.slow  # converts, trains 4 steps and evaluates: 20-50 s on 2 shared CPU cores
def test_four_band_uint16_tiff_dataset_trains_and_evaluates(tmp_path):
    _tiles(str(tmp_path / "src"), 4, _save_tiff_planar)
    source = folder.folder_source(str(tmp_path / "src"), ("background", "roof"), image_channels=4, image_dtype="uint16")
    data_dir = str(tmp_path / "data")
    writer.write_dataset(source, data_dir)
    gin.clear_config()
    gin.parse_config_files_and_bindings(
        [os.path.join(REPO_ROOT, "configs", "multiband_uint16.gin")],
        [
            f"converted_dataset.data_dir = '{data_dir}'",
            "input_pipeline.crop_size = (32, 32)",
            "ResNet.base_filters = 4",
            "DeepLabV3Plus.aspp_filters = 8",
            "DeepLabV3Plus.low_level_filters = 4",
            "DeepLabV3Plus.decoder_filters = 8",
            "train.steps = 4",
            "train.global_batch_size = 4",
            "train.steps_per_loop = 2",
            "train.checkpoint_every_steps = 4",
            "evaluation.every_steps = 4",
            "evaluation.global_batch_size = 2",
            "optimizer.warmup_steps = 1",
            "observe.peak_matmul_size = 256",
        ],
    )
    report = train_lib.run("train_and_eval", str(tmp_path / "run"), strategy=one_device_strategy())
    assert report["step"] == 4 and 0.0 <= report["miou"] <= 1.0 and np.isfinite(report["mf1"])


def test_pixel_normalisation_rules():
    rgb = info_lib.DatasetInfo("rgb", 2, ("a", "b"), 255, ("t",), ("e",), 1, 1, channel_mean=(1.0, 2.0, 3.0))
    pixels = tf.constant([[[0, 128, 255]]], tf.uint8)
    # RGB uint8 keeps [-1, 1] even when the dataset has statistics: the numerics of existing runs stay.
    np.testing.assert_allclose(records.pixel_normalizer(rgb)(pixels), [[[-1.0, 128 / 127.5 - 1, 1.0]]], atol=1e-6)
    given = records.pixel_normalizer(rgb, (0.0, 128.0, 255.0), (1.0, 2.0, 5.0))(pixels)
    np.testing.assert_allclose(given, [[[0.0, 0.0, 0.0]]])
    bands = dataclasses.replace(rgb, image_channels=2, image_dtype="uint16", channel_mean=(100.0, 200.0))
    bands = dataclasses.replace(bands, channel_std=(10.0, 50.0))
    values = tf.constant([[[110, 100]]], tf.uint16)
    np.testing.assert_allclose(records.pixel_normalizer(bands)(values), [[[1.0, -2.0]]])
    plain = dataclasses.replace(bands, channel_mean=None, channel_std=None)
    np.testing.assert_allclose(records.pixel_normalizer(plain)(tf.constant([[[0, 65535]]], tf.uint16)), [[[-1, 1]]])
    with pytest.raises(UserInputError, match="input_pipeline.channel_mean and channel_std: expected 2 values"):
        records.pixel_normalizer(bands, (1.0,), (1.0,))


def test_photometric_jitter_is_refused_for_multiband_images(tmp_path):
    from trainer.data.pipeline import InputPipeline, PhotometricJitter

    _tiles(str(tmp_path / "src"), 4, _save_tiff_planar, num_images=4)
    source = folder.folder_source(str(tmp_path / "src"), ("background", "roof"), image_channels=4, image_dtype="uint16")
    info, _ = writer.write_dataset(source, str(tmp_path / "out"))
    pipeline = InputPipeline(crop_size=(32, 32), photometric_jitter=PhotometricJitter())
    with pytest.raises(UserInputError, match="input_pipeline.photometric_jitter: expected None.*4 channel"):
        pipeline.train_dataset(info, 2)
