"""trainer.serving.predict: label PNGs whose class ids are the model's argmax, from a SavedModel or a model_dir."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tests.helpers import REPO_ROOT, one_device_strategy, parse_smoke_config
from trainer import train_lib
from trainer.common.errors import UserInputError
from trainer.common.images import voc_palette
from trainer.core.inference import InferenceConfig, predict_logits
from trainer.models import DeepLabV3Plus
from trainer.serving import predict

pytestmark = pytest.mark.usefixtures("clear_gin")

NUM_CLASSES = 4
IMAGE_SIZES = {"first.png": (20, 28), "second.jpg": (33, 17)}


def _write_images(directory, sizes=IMAGE_SIZES):
    os.makedirs(directory)
    rng = np.random.default_rng(0)
    for name, (height, width) in sizes.items():
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        encode = tf.io.encode_png if name.endswith(".png") else tf.io.encode_jpeg
        tf.io.write_file(os.path.join(directory, name), encode(pixels))
    return sorted(os.path.join(directory, name) for name in sizes)


class ExportedModule(tf.Module):
    """A SavedModel following the export contract: uint8 images in, class_map and probabilities out."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])
    def serve(self, images):
        logits = self.model(tf.cast(images, tf.float32) / 127.5 - 1.0, training=False)
        return {"class_map": tf.argmax(logits, axis=-1, output_type=tf.int32), "probabilities": tf.nn.softmax(logits)}


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    keras.utils.set_random_seed(0)
    inputs = keras.Input([None, None, 3])
    hidden = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Conv2D(NUM_CLASSES, 3, padding="same")(hidden))
    path = str(tmp_path_factory.mktemp("export") / "7")
    module = ExportedModule(model)
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
    return path


def _decode(path):
    return tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)


def _read_label(path):
    return tf.io.decode_png(tf.io.read_file(path)).numpy()[..., 0]


def test_label_pngs_hold_the_saved_models_argmax_and_overlays_blend_the_palette(saved_model, tmp_path):
    images = _write_images(str(tmp_path / "images"))
    # The parent of numbered exports (model_dir/export) picks the newest.
    predictor = predict.load_predictor(os.path.dirname(saved_model))
    assert predictor.num_classes == NUM_CLASSES
    written = predict.predict_images(predictor, images, str(tmp_path / "out"))
    loaded = tf.saved_model.load(saved_model)
    signature = loaded.signatures["serving_default"]
    classes_seen = set()
    for entry in written:
        pixels = _decode(entry["image"])
        expected = signature(images=pixels[tf.newaxis])["class_map"][0].numpy()
        label = _read_label(entry["label"])
        np.testing.assert_array_equal(label, expected)
        classes_seen |= set(np.unique(label))
        overlay = _decode(entry["overlay"]).numpy()
        colours = voc_palette(NUM_CLASSES)[expected].astype(np.float32)
        np.testing.assert_array_equal(overlay, np.rint(0.5 * pixels.numpy() + 0.5 * colours).astype(np.uint8))
    assert len(classes_seen) > 1  # a non-trivial map: the comparison could have failed
    assert sorted(os.listdir(tmp_path / "out")) == [
        "first_label.png",
        "first_overlay.png",
        "second_label.png",
        "second_overlay.png",
    ]


def test_tta_bindings_reach_the_prediction(saved_model, tmp_path):
    images = _write_images(str(tmp_path / "images"))
    bindings = ["inference.mode = 'slide'", "inference.crop_size = (16, 16)", "inference.flip = True"]
    predictor = predict.load_predictor(saved_model, gin_bindings=bindings)
    assert predictor.inference_config == InferenceConfig(mode="slide", crop_size=(16, 16), flip=True)
    written = predict.predict_images(predictor, images, str(tmp_path / "out"))
    loaded = tf.saved_model.load(saved_model)
    signature = loaded.signatures["serving_default"]
    for entry in written:
        pixels = _decode(entry["image"])
        scores = predict_logits(
            lambda x: signature(images=tf.cast(tf.round((x + 1.0) * 127.5), tf.uint8))["probabilities"],
            tf.cast(pixels, tf.float32)[tf.newaxis] / 127.5 - 1.0,
            NUM_CLASSES,
            predictor.inference_config,
        )
        expected = tf.argmax(scores[0], axis=-1).numpy()
        np.testing.assert_array_equal(_read_label(entry["label"]), expected)
        # Windows and flips see other context than the whole image, so the map differs from plain inference.
        plain = signature(images=pixels[tf.newaxis])["class_map"][0].numpy()
        assert (expected != plain).any()


def test_bad_inputs_are_config_errors(tmp_path):
    with pytest.raises(UserInputError, match="--model=.*expected a SavedModel directory"):
        predict.load_predictor(str(tmp_path))
    paths = [str(tmp_path / "a" / "x.png"), str(tmp_path / "b" / "x.jpg")]
    with pytest.raises(UserInputError, match="--images: expected distinct file names"):
        predict.predict_images(None, paths, str(tmp_path / "out"))


@pytest.mark.slow
@pytest.mark.subprocess
def test_command_line_on_a_model_dir_predicts_the_restored_models_argmax(tmp_path):
    data_dir = str(tmp_path / "data")
    model_dir = str(tmp_path / "run")
    parse_smoke_config(data_dir, "train.steps = 3")
    train_lib.run("train", model_dir, strategy=one_device_strategy())
    images = _write_images(str(tmp_path / "images"), {"a.png": (48, 48), "b.png": (40, 56)})

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "trainer.serving.predict",
            f"--model={model_dir}",
            f"--images={tmp_path / 'images' / '*.png'}",
            f"--output_dir={tmp_path / 'out'}",
        ],
        cwd=REPO_ROOT,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Wrote label maps and overlays of 2 images" in result.stdout

    parse_smoke_config(data_dir)
    model = DeepLabV3Plus(num_classes=5)
    model(tf.zeros([1, 48, 48, 3]))
    latest = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    tf.train.Checkpoint(model=model).restore(latest).assert_existing_objects_matched().expect_partial()
    for path in images:
        pixels = _decode(path)
        logits = model(tf.cast(pixels, tf.float32)[tf.newaxis] / 127.5 - 1.0, training=False)
        stem = os.path.splitext(os.path.basename(path))[0]
        label = _read_label(str(tmp_path / "out" / f"{stem}_label.png"))
        np.testing.assert_array_equal(label, tf.argmax(logits[0], axis=-1).numpy())
        assert _decode(str(tmp_path / "out" / f"{stem}_overlay.png")).shape == pixels.shape
