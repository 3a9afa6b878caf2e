"""The serving SavedModel: layout, signatures as TF Serving sees them, and predictions equal to the trained model's."""

import contextlib
import io
import os
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from PIL import Image

from tests.helpers import one_device_strategy
from trainer import train_lib
from trainer.common.errors import UserInputError
from trainer.data.synthetic import CLASS_NAMES, synthetic_shapes
from trainer.serving import exporter, preprocessing

pytestmark = pytest.mark.slow

NUM_CLASSES = len(CLASS_NAMES)


@pytest.fixture(scope="module")
def exported(trained_run) -> str:
    """`--mode=export` of the trained run; returns the SavedModel directory."""
    trained_run.parse_config()
    train_lib.run("export", trained_run.model_dir, strategy=one_device_strategy())
    return os.path.join(trained_run.model_dir, "export", str(trained_run.step))


@pytest.fixture(scope="module")
def validation(trained_run) -> np.ndarray:
    """Four 48×48 validation images, uint8."""
    trained_run.parse_config()
    images, _, _ = exporter.validation_images(synthetic_shapes(), (48, 48), 4)
    return images


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _reference_logits(model, images: np.ndarray) -> np.ndarray:
    """The in-memory model on uint8 images, normalised as the input pipeline does."""
    return model(tf.constant(images, tf.float32) / 127.5 - 1.0, training=False).numpy()


def test_export_mode_writes_a_numeric_version_directory_with_the_labels(exported, trained_run):
    export_base = os.path.join(trained_run.model_dir, "export")
    # Only the version directory: no temporary directory left for TF Serving to trip over.
    assert sorted(os.listdir(export_base)) == [str(trained_run.step)]
    assert tf.saved_model.contains_saved_model(exported)
    with open(os.path.join(exported, "assets", "labels.txt")) as f:
        assert tuple(f.read().splitlines()) == CLASS_NAMES


def test_saved_model_cli_lists_the_documented_signatures(exported):
    result = subprocess.run(
        [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli", "show", "--all", "--dir", exported],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    blocks = dict(re.findall(r"signature_def\['(\w+)'\]:\n(.*?)Method name is:", result.stdout, re.S))

    def tensors(block: str, kind: str) -> dict[str, tuple[str, str]]:
        section = block.split("output(s):")[0 if kind == "inputs" else 1]
        return {
            name: (dtype, shape)
            for name, dtype, shape in re.findall(
                rf"{kind}\['(\w+)'\] tensor_info:\s+dtype: (\w+)\s+shape: (\([^)]*\))", section
            )
        }

    outputs = {"class_map": ("DT_INT32", "(-1, -1, -1)"), "probabilities": ("DT_FLOAT", f"(-1, -1, -1, {NUM_CLASSES})")}
    assert tensors(blocks["serving_default"], "inputs") == {"images": ("DT_UINT8", "(-1, -1, -1, 3)")}
    assert tensors(blocks["serving_default"], "outputs") == outputs
    assert tensors(blocks["serve_encoded"], "inputs") == {"image_bytes": ("DT_STRING", "(-1)")}
    assert tensors(blocks["serve_encoded"], "outputs") == outputs


_FRESH_PROCESS_SCRIPT = textwrap.dedent(
    """
    import glob, os, sys
    import numpy as np
    import tensorflow as tf

    export_dir, work_dir = sys.argv[1:]
    images = np.load(os.path.join(work_dir, "images.npy"))
    pngs = []
    for path in sorted(glob.glob(os.path.join(work_dir, "*.png"))):
        with open(path, "rb") as f:
            pngs.append(f.read())
    loaded = tf.saved_model.load(export_dir)
    raw = loaded.signatures["serving_default"](images=tf.constant(images))
    encoded = loaded.signatures["serve_encoded"](image_bytes=tf.constant(pngs))
    outputs = {f"raw_{k}": v.numpy() for k, v in raw.items()}
    outputs.update({f"encoded_{k}": v.numpy() for k, v in encoded.items()})
    np.savez(os.path.join(work_dir, "outputs.npz"), **outputs)
    """
)


def test_both_signatures_in_a_fresh_process_match_the_in_memory_model(exported, validation, trained_run, tmp_path):
    np.save(tmp_path / "images.npy", validation)
    for index, image in enumerate(validation):
        (tmp_path / f"image_{index}.png").write_bytes(_png(image))  # PNG: lossless, so exact comparisons hold
    result = subprocess.run(
        [sys.executable, "-c", _FRESH_PROCESS_SCRIPT, exported, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = np.load(tmp_path / "outputs.npz")

    logits = _reference_logits(trained_run.restored_model(), validation)
    expected_map = np.argmax(logits, axis=-1)
    assert len(np.unique(expected_map)) > 1, "a constant class map would make the comparison trivial"
    expected_probabilities = tf.nn.softmax(logits).numpy()
    for prefix in ("raw", "encoded"):
        assert outputs[f"{prefix}_class_map"].dtype == np.int32
        np.testing.assert_array_equal(outputs[f"{prefix}_class_map"], expected_map)
        assert outputs[f"{prefix}_probabilities"].shape == (4, 48, 48, NUM_CLASSES)
        np.testing.assert_allclose(outputs[f"{prefix}_probabilities"], expected_probabilities, atol=1e-5)


def test_sizes_off_the_output_stride_are_padded_then_cropped(exported, validation, trained_run):
    serve = tf.saved_model.load(exported).signatures["serving_default"]
    image = validation[:1, :40, :44]  # neither side a multiple of the output stride (16)
    outputs = serve(images=tf.constant(image))
    assert outputs["class_map"].shape == (1, 40, 44)

    # The model sees the image padded to 48×48 with the pipeline's padding value (0, mid-grey).
    padded = np.pad(tf.constant(image, tf.float32).numpy() / 127.5 - 1.0, [(0, 0), (0, 8), (0, 4), (0, 0)])
    logits = trained_run.restored_model()(padded, training=False).numpy()[:, :40, :44]
    np.testing.assert_array_equal(outputs["class_map"].numpy(), np.argmax(logits, axis=-1))


def test_serve_encoded_takes_jpeg_and_png_of_different_sizes(exported, validation):
    loaded = tf.saved_model.load(exported)
    small = validation[1, :32, :40]
    jpeg = tf.io.encode_jpeg(validation[2]).numpy()
    outputs = loaded.signatures["serve_encoded"](image_bytes=tf.constant([_png(validation[0]), _png(small), jpeg]))
    class_map, probabilities = outputs["class_map"].numpy(), outputs["probabilities"].numpy()
    assert class_map.shape == (3, 48, 48) and probabilities.shape == (3, 48, 48, NUM_CLASSES)

    # Each image is inferred at its own size, exactly as serving_default infers it alone.
    serve = loaded.signatures["serving_default"]
    decoded_jpeg = tf.io.decode_jpeg(jpeg).numpy()
    for index, image in enumerate([validation[0], small, decoded_jpeg]):
        alone = serve(images=tf.constant(image[np.newaxis]))
        height, width = image.shape[:2]
        np.testing.assert_array_equal(class_map[index, :height, :width], alone["class_map"].numpy()[0])
        np.testing.assert_allclose(probabilities[index, :height, :width], alone["probabilities"].numpy()[0], atol=1e-5)
    # Outside the smaller image: the padding class and zero probabilities.
    assert (class_map[1, 32:] == preprocessing.PADDING_CLASS).all() and (class_map[1, :, 40:] == -1).all()
    assert (probabilities[1, 32:] == 0).all() and (probabilities[1, :, 40:] == 0).all()
    np.testing.assert_allclose(probabilities[1, :32, :40].sum(axis=-1), 1.0, atol=1e-5)


def test_best_checkpoint_is_exported_when_asked(trained_run, tmp_path):
    model_dir = tmp_path / "run"
    best_dir = model_dir / "best"
    best_dir.mkdir(parents=True)
    # A lone checkpoint without CheckpointManager's state file, as a best-checkpoint keeper may write it.
    for path in tf.io.gfile.glob(os.path.join(trained_run.checkpoint_dir, "ckpt-3.*")):
        shutil.copy(path, best_dir)
    trained_run.parse_config("export.checkpoint = 'best'")
    train_lib.run("export", str(model_dir), strategy=one_device_strategy())
    assert os.listdir(model_dir / "export") == ["3"]

    validation = np.full([1, 48, 48, 3], 200, np.uint8)
    exported = tf.saved_model.load(str(model_dir / "export" / "3")).signatures["serving_default"]
    step_3 = trained_run.restored_model(os.path.join(trained_run.checkpoint_dir, "ckpt-3"))
    np.testing.assert_allclose(
        exported(images=tf.constant(validation))["probabilities"].numpy(),
        tf.nn.softmax(_reference_logits(step_3, validation)).numpy(),
        atol=1e-5,
    )


def test_export_without_a_checkpoint_is_a_config_error(trained_run, tmp_path):
    trained_run.parse_config()
    with pytest.raises(UserInputError, match=r"expected a checkpoint in .*checkpoints, received none"):
        train_lib.run("export", str(tmp_path / "empty"), strategy=one_device_strategy())
    trained_run.parse_config("export.checkpoint = 'best'")
    with pytest.raises(UserInputError, match=r"export.checkpoint='best'.*best, received none"):
        train_lib.run("export", trained_run.model_dir, strategy=one_device_strategy())
    trained_run.parse_config("export.checkpoint = 'newest'")
    with pytest.raises(UserInputError, match=r"export.checkpoint: expected one of \{latest, best\}, received 'newest'"):
        train_lib.run("export", trained_run.model_dir, strategy=one_device_strategy())


def test_weights_context_decides_the_exported_weights(trained_run, tmp_path):
    model = trained_run.restored_model()
    bias = model.classifier.bias
    original = bias.numpy()

    @contextlib.contextmanager
    def favour_class_3():
        # Stands in for EMA: swaps other values into the variables, and restores them afterwards.
        bias.assign(original + np.eye(NUM_CLASSES, dtype=np.float32)[3] * 1e4)
        try:
            yield
        finally:
            bias.assign(original)

    result = exporter.export_model(
        model,
        str(tmp_path),
        step=7,
        info=synthetic_shapes(),
        input_pipeline=train_lib.InputPipeline(),
        config=exporter.ExportConfig(),
        weights_context=favour_class_3,
    )
    assert result.saved_model_dir == str(tmp_path / "export" / "7") and result.tflite_files == {}
    np.testing.assert_array_equal(bias.numpy(), original)
    serve = tf.saved_model.load(result.saved_model_dir).signatures["serving_default"]
    class_map = serve(images=tf.zeros([1, 48, 48, 3], tf.uint8))["class_map"].numpy()
    assert (class_map == 3).all()


def test_a_mixed_precision_model_is_exported_in_float32(trained_run, validation, tmp_path):
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        bfloat16_model = trained_run.restored_model()
        assert bfloat16_model.backbone.compute_dtype == "bfloat16"
        bfloat16_logits = _reference_logits(bfloat16_model, validation)
        result = exporter.export_model(
            bfloat16_model,
            str(tmp_path),
            step=6,
            info=synthetic_shapes(),
            input_pipeline=train_lib.InputPipeline(),
            config=exporter.ExportConfig(),
        )
        assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"  # restored after the export
    finally:
        keras.mixed_precision.set_global_policy("float32")
    float32_logits = _reference_logits(trained_run.restored_model(), validation)
    assert not np.allclose(bfloat16_logits, float32_logits, atol=1e-4)  # bfloat16 computes visibly differently
    serve = tf.saved_model.load(result.saved_model_dir).signatures["serving_default"]
    outputs = serve(images=tf.constant(validation))
    np.testing.assert_array_equal(outputs["class_map"].numpy(), np.argmax(float32_logits, axis=-1))
    np.testing.assert_allclose(outputs["probabilities"].numpy(), tf.nn.softmax(float32_logits).numpy(), atol=1e-5)
