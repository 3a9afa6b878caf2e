"""ONNX and TF.js exports: each loaded by its own runtime (ONNX Runtime; tfjs in Node; the page in headless
Chromium) agrees with the SavedModel, and the one parity report lists every format."""

import importlib.util
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from devtools import web_page
from tests.helpers import one_device_strategy
from trainer import train_lib
from trainer.data.synthetic import synthetic_shapes
from trainer.serving import exporter, onnx_export, tfjs_export

pytestmark = pytest.mark.slow

TFJS_CONVERTER = tfjs_export.find_converter(os.environ.get("TFJS_CONVERTER"))
HAS_ONNX = all(importlib.util.find_spec(name) for name in ("tf2onnx", "onnxruntime"))
HAS_NODE_TFJS = shutil.which("node") is not None and os.path.exists(
    os.path.join(tfjs_export.DEFAULT_WEB_DIR, "node_modules", "@tensorflow", "tfjs")
)
HAS_TFJS = TFJS_CONVERTER is not None and HAS_NODE_TFJS
needs_onnx = pytest.mark.skipif(not HAS_ONNX, reason="tf2onnx and onnxruntime (the [export] extra) are not installed")
needs_tfjs = pytest.mark.skipif(
    not HAS_TFJS,
    reason="needs tensorflowjs_converter (`make tfjs-env`, or TFJS_CONVERTER=<path>) and node with @tensorflow/tfjs "
    "(`npm ci --prefix deploy/web`)",
)
FORMATS = ("saved_model", "tflite") + (("onnx",) if HAS_ONNX else ()) + (("tfjs",) if HAS_TFJS else ())
NUM_IMAGES = 6


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory) -> str:
    """`--mode=export` of every available format, in a copy of the trained run; returns the run directory."""
    if not (HAS_ONNX or HAS_TFJS):
        pytest.skip("neither ONNX (tf2onnx, onnxruntime) nor TF.js (converter, node) is available")
    model_dir = str(tmp_path_factory.mktemp("formats") / "run")
    shutil.copytree(trained_run.checkpoint_dir, os.path.join(model_dir, "checkpoints"))
    trained_run.parse_config(
        f"export.formats = {FORMATS}",
        "export.tflite_quantizations = ('float32',)",
        f"export.num_parity_images = {NUM_IMAGES}",
        *([f"export.tfjs_converter = '{TFJS_CONVERTER}'"] if HAS_TFJS else []),
    )
    train_lib.run("export", model_dir, strategy=one_device_strategy())
    return model_dir


@pytest.fixture(scope="module")
def validation(trained_run, exported):
    """(images uint8 [N, 48, 48, 3], inside, the SavedModel's class maps) on the parity images."""
    trained_run.parse_config()
    images, _, inside = exporter.validation_images(synthetic_shapes(), (48, 48), NUM_IMAGES)
    serve = tf.saved_model.load(os.path.join(exported, "export", "6")).signatures["serving_default"]
    return images, inside, serve(images=tf.constant(images))["class_map"].numpy()


def _agreement(class_maps: np.ndarray, reference: np.ndarray, inside: np.ndarray) -> float:
    return float(np.mean(class_maps[inside] == reference[inside]))


def test_one_parity_report_lists_every_format(exported):
    with open(os.path.join(exported, "parity", "6", "parity.json")) as f:
        report = json.load(f)
    expected = {
        "tflite": ["float32"],
        "onnx": ["float32"] if HAS_ONNX else None,
        "tfjs": ["float32"] if HAS_TFJS else None,
    }
    for name, variants in expected.items():
        assert (sorted(report[name]) if name in report else None) == variants
        for row in report.get(name, {}).values():
            assert row["pixel_agreement"] >= 0.999 and row["miou_vs_saved_model"] >= 0.99
            assert row["size_bytes"] > 0 and os.path.exists(row["file"]) and row["runtime"]
    assert report["num_images"] == NUM_IMAGES and report["input_size"] == [48, 48]


@needs_onnx
def test_onnx_model_runs_in_onnxruntime_with_any_batch_and_agrees(exported, validation):
    images, inside, reference = validation
    path = os.path.join(exported, "onnx", "6", "deeplab.onnx")
    session = onnx_export.session(path)
    (inputs,) = session.get_inputs()
    assert inputs.name == "images" and inputs.type == "tensor(uint8)" and inputs.shape[1:] == [48, 48, 3]
    assert not isinstance(inputs.shape[0], int)  # the batch is dynamic
    assert {output.name for output in session.get_outputs()} == {"class_map", "probabilities"}
    class_maps, probabilities = session.run(["class_map", "probabilities"], {"images": images})
    assert _agreement(class_maps, reference, inside) >= 0.999
    serve = tf.saved_model.load(os.path.join(exported, "export", "6")).signatures["serving_default"]
    expected = serve(images=tf.constant(images[:2]))["probabilities"].numpy()
    np.testing.assert_allclose(session.run(["probabilities"], {"images": images[:2]})[0], expected, atol=1e-4)
    assert probabilities.shape == (NUM_IMAGES, 48, 48, 5)


@needs_tfjs
def test_tfjs_model_in_node_agrees_and_carries_the_labels(exported, validation):
    images, inside, reference = validation
    model_dir = os.path.join(exported, "tfjs", "6")
    assert _agreement(tfjs_export.tfjs_class_maps(model_dir, images), reference, inside) >= 0.999
    with open(os.path.join(model_dir, "labels.txt")) as f:
        assert tuple(f.read().splitlines()) == synthetic_shapes().class_names


@needs_tfjs
@pytest.mark.skipif(web_page.find_chromium() is None, reason="chromium is not installed (apt-get install chromium)")
@pytest.mark.skipif(bool(web_page.missing_page_files()), reason="the page is not built (npm run build in deploy/web)")
def test_page_in_headless_chromium_draws_the_saved_models_classes(exported, validation, tmp_path):
    images, _, reference = validation
    image_file, screenshot = str(tmp_path / "image.png"), str(tmp_path / "page.png")
    Image.fromarray(images[1]).save(image_file)
    result = web_page.capture(os.path.join(exported, "tfjs", "6"), image_file, screenshot)
    assert result["status"] == "done" and (result["width"], result["height"]) == (48, 48)
    drawn = web_page.class_map_from_screenshot(screenshot, images[1], result, num_classes=5)
    assert np.mean(drawn == reference[1]) >= 0.999
