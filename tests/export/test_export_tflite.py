"""TFLite conversions: each runs in the interpreter, agrees with the SavedModel, carries its labels."""

import io
import json
import os
import shutil
import zipfile

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.lite.python import schema_py_generated as schema_fb
from tensorflow.lite.tools import flatbuffer_utils

from tests.helpers import one_device_strategy
from trainer import train_lib
from trainer.common.errors import UserInputError
from trainer.data.synthetic import CLASS_NAMES, synthetic_shapes
from trainer.serving import exporter, tflite, tflite_metadata

pytestmark = pytest.mark.slow
litert = pytest.importorskip(
    "ai_edge_litert.interpreter", reason="ai-edge-litert (the [export] extra) is not installed"
)

CONVERSIONS = ("float32", "float16", "dynamic_range_int8", "int8")


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory) -> str:
    """`--mode=export` with every TFLite conversion, in a copy of the trained run; returns the run directory."""
    model_dir = str(tmp_path_factory.mktemp("tflite") / "run")
    shutil.copytree(trained_run.checkpoint_dir, os.path.join(model_dir, "checkpoints"))
    trained_run.parse_config(
        f"export.tflite_quantizations = {CONVERSIONS}",
        "export.num_calibration_images = 16",
        "export.num_parity_images = 8",
    )
    train_lib.run("export", model_dir, strategy=one_device_strategy())
    return model_dir


def _tflite_file(model_dir: str, conversion: str) -> bytes:
    with open(os.path.join(model_dir, "tflite", "6", f"deeplab_{conversion}.tflite"), "rb") as f:
        return f.read()


@pytest.mark.parametrize("conversion", CONVERSIONS)
def test_each_conversion_runs_in_the_interpreter(exported, conversion):
    interpreter = tflite.interpreter(_tflite_file(exported, conversion))
    # LiteRT's interpreter, not TensorFlow's deprecated tf.lite.Interpreter.
    assert isinstance(interpreter, litert.Interpreter) and not isinstance(interpreter, tf.lite.Interpreter)
    runner = interpreter.get_signature_runner("serving_default")
    (images,) = runner.get_input_details().values()
    assert images["dtype"] == np.uint8 and list(images["shape"]) == [1, 48, 48, 3]
    outputs = runner(images=np.full([1, 48, 48, 3], 90, np.uint8))
    assert outputs["class_map"].dtype == np.int32 and outputs["class_map"].shape == (1, 48, 48)
    assert outputs["probabilities"].dtype == np.float32 and outputs["probabilities"].shape == (1, 48, 48, 5)
    assert ((outputs["class_map"] >= 0) & (outputs["class_map"] < 5)).all()
    np.testing.assert_allclose(outputs["probabilities"].sum(axis=-1), 1.0, atol=0.02)


def test_parity_report_meets_the_thresholds_and_matches_an_independent_count(exported, trained_run):
    with open(os.path.join(exported, "tflite", "6", "parity.json")) as f:
        report = json.load(f)
    assert set(report["tflite"]) == set(CONVERSIONS)
    assert report["num_images"] == 8 and report["input_size"] == [48, 48]
    assert report["tflite"]["float32"]["pixel_agreement"] >= 0.999
    assert report["tflite"]["float16"]["pixel_agreement"] >= 0.99
    for conversion in CONVERSIONS:
        row = report["tflite"][conversion]
        assert 0.0 <= row["pixel_agreement"] <= 1.0 and 0.0 <= row["miou_vs_saved_model"] <= 1.0
        assert row["size_bytes"] == len(_tflite_file(exported, conversion))

    # Counted again here, outside parity_report: the int8 model on the same validation images.
    trained_run.parse_config()
    images, _, inside = exporter.validation_images(synthetic_shapes(), (48, 48), 8)
    runner = tflite.interpreter(_tflite_file(exported, "int8")).get_signature_runner("serving_default")
    int8_maps = np.concatenate([runner(images=image[np.newaxis])["class_map"] for image in images])
    serve = tf.saved_model.load(os.path.join(exported, "export", "6")).signatures["serving_default"]
    reference = serve(images=tf.constant(images))["class_map"].numpy()
    agreement = np.mean(int8_maps[inside] == reference[inside])
    assert report["tflite"]["int8"]["pixel_agreement"] == pytest.approx(agreement, abs=1e-9)


@pytest.mark.parametrize("conversion", CONVERSIONS)
def test_metadata_carries_the_labels_and_tensor_descriptions(exported, conversion):
    content = _tflite_file(exported, conversion)
    metadata = tflite_metadata.read_metadata(content)
    assert metadata["labels"] == CLASS_NAMES
    assert metadata["version"] == "6" and metadata["min_parser_version"] == "1.0.0"
    assert conversion in metadata["description"]
    assert [tensor["name"] for tensor in metadata["inputs"]] == ["images"]
    outputs = {tensor["name"]: tensor["label_files"] for tensor in metadata["outputs"]}
    assert outputs == {
        "class_map": [("labels.txt", "TENSOR_VALUE_LABELS")],
        "probabilities": [("labels.txt", "TENSOR_AXIS_LABELS")],
    }
    # The label file is packed the standard way: a zip archive appended to the flatbuffer.
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        assert archive.namelist() == ["labels.txt"]


def test_output_metadata_follows_the_subgraph_output_order(exported):
    content = _tflite_file(exported, "float32")
    _, outputs = tflite_metadata.signature_tensor_names(content)
    assert [tensor["name"] for tensor in tflite_metadata.read_metadata(content)["outputs"]] == outputs


def test_int8_model_computes_in_int8_between_input_and_output(exported):
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(_tflite_file(exported, "int8")))
    subgraph = model.subgraphs[0]
    int8_convolutions = 0
    for operator in subgraph.operators:
        name = flatbuffer_utils.opcode_to_name(model, operator.opcodeIndex)
        if name == "CONV_2D":
            activation, weights = (subgraph.tensors[i].type for i in operator.inputs[:2])
            assert (activation, weights) == (schema_fb.TensorType.INT8, schema_fb.TensorType.INT8)
            int8_convolutions += 1
    assert int8_convolutions > 10


def test_unknown_conversion_is_a_config_error():
    with pytest.raises(UserInputError, match=r"export.tflite_quantizations: expected a tuple of .*received 'int4'"):
        exporter.ExportConfig(tflite_quantizations=("float32", "int4"))
