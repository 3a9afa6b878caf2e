"""The deployment formats written beside the SavedModel (TFLite, ONNX, TF.js), each with the runtime that runs it,
and the one parity report that measures them all against the SavedModel.

Layout in the run directory:

    model_dir/tflite/<step>/deeplab_<conversion>.tflite   LiteRT (ai-edge-litert)
    model_dir/onnx/<step>/deeplab.onnx                    ONNX Runtime (TensorRT: trtexec --onnx=...)
    model_dir/tfjs/<step>/model.json, *.bin, labels.txt   TensorFlow.js graph model (the deploy/web page)
    model_dir/parity/<step>/parity.json                   every format against the SavedModel
"""

import dataclasses
import importlib.metadata
import json
import os
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras
from absl import logging

from trainer.common.files import write_atomically
from trainer.serving import onnx_export, parity, tfjs_export, tflite

SAVED_MODEL = "saved_model"
TFLITE = "tflite"
ONNX = "onnx"
TFJS = "tfjs"
FORMAT_CHOICES = (SAVED_MODEL, TFLITE, ONNX, TFJS)
PARITY_SUBDIR = "parity"
PARITY_FILE = "parity.json"
# The variant name of the formats written in one precision only.
FLOAT32 = "float32"


@dataclasses.dataclass(frozen=True)
class Artefact:
    """One exported model: where it is, what runs it, and how to get its class maps for uint8 images [N, H, W, 3]."""

    format: str
    variant: str
    path: str
    runtime: str
    size_bytes: int
    class_maps: Callable[[np.ndarray], np.ndarray]


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def step_directory(model_dir: str, subdir: str, step: int) -> str:
    """`model_dir/<subdir>/<step>`, created."""
    directory = os.path.join(model_dir, subdir, str(step))
    tf.io.gfile.makedirs(directory)
    return directory


def write_tflite(
    model: keras.Model,
    directory: str,
    input_size: tuple[int, int],
    size_multiple: int,
    quantizations: Sequence[tflite.Quantization],
    class_names: tuple[str, ...],
    version: str,
    calibration: Callable[[], list[np.ndarray]],
) -> list[Artefact]:
    """Writes each TFLite conversion (with metadata) to `directory`; `calibration()` gives the int8 images."""
    artefacts = []
    for quantization in quantizations:
        images = calibration() if quantization is tflite.Quantization.INT8 else None
        content = tflite.convert(model, input_size, size_multiple, quantization, representative_images=images)
        content = tflite.with_metadata(content, class_names, quantization, version)
        path = os.path.join(directory, f"deeplab_{quantization.value}.tflite")
        write_atomically(path, content)
        logging.info("Wrote %s (%d bytes).", path, len(content))
        artefacts.append(
            Artefact(
                TFLITE,
                quantization.value,
                path,
                f"ai-edge-litert {_version('ai-edge-litert')}",
                len(content),
                lambda images, content=content: tflite.tflite_class_maps(content, images),
            )
        )
    return artefacts


def write_onnx(model: keras.Model, directory: str, input_size: tuple[int, int], size_multiple: int) -> Artefact:
    """Converts the model (as served) to `directory/deeplab.onnx` (dynamic batch, `input_size` images)."""
    path = os.path.join(directory, onnx_export.ONNX_FILE)
    onnx_export.convert(model, input_size, size_multiple, path)
    logging.info("Wrote %s (%d bytes, opset %d).", path, os.path.getsize(path), onnx_export.OPSET)
    return Artefact(
        ONNX,
        FLOAT32,
        path,
        f"onnxruntime {_version('onnxruntime')}",
        os.path.getsize(path),
        lambda images: onnx_export.onnx_class_maps(path, images),
    )


def _tfjs_version(web_dir: str) -> str:
    package = os.path.join(web_dir, "node_modules", "@tensorflow", "tfjs", "package.json")
    if not os.path.exists(package):
        return "?"
    with open(package) as f:
        return json.load(f)["version"]


def write_tfjs(
    saved_model_dir: str, directory: str, class_names: tuple[str, ...], converter: str | None, web_dir: str
) -> Artefact:
    """Converts the SavedModel to a TF.js graph model in `directory` (replacing what was there)."""
    for name in os.listdir(directory):
        os.remove(os.path.join(directory, name))
    tfjs_export.convert(saved_model_dir, directory, class_names, converter)
    size = tfjs_export.model_size_bytes(directory)
    logging.info("Wrote the TF.js graph model %s (%d bytes).", directory, size)
    return Artefact(
        TFJS,
        FLOAT32,
        directory,
        f"tfjs {_tfjs_version(web_dir)} (Node, cpu)",
        size,
        lambda images: tfjs_export.tfjs_class_maps(directory, images, web_dir),
    )


def measure(artefacts: Sequence[Artefact], report: parity.ParityReport) -> dict:
    """Runs every artefact in its runtime on the report's images, adds its row, and returns the report."""
    for artefact in artefacts:
        report.add(
            artefact.format,
            artefact.variant,
            artefact.class_maps(report.images),
            size_bytes=artefact.size_bytes,
            runtime=artefact.runtime,
            file=artefact.path,
        )
    return report.report
