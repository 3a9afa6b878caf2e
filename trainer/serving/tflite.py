"""TFLite conversion at a fixed input size (float32, float16, dynamic-range int8, full-integer int8) and the
parity report that measures each conversion against the SavedModel.

Every TFLite model takes `images` uint8 [1, H, W, 3] (raw RGB; normalisation is in the graph, as in the
SavedModel) and returns `class_map` int32 [1, H, W] and `probabilities` float32 [1, H, W, C]; the class names
are in its metadata (see `tflite_metadata`). In the full-integer model every op between the input's
uint8 → int8 quantisation and the probabilities' dequantisation runs in int8.
"""

import enum
import warnings
from collections.abc import Iterable, Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras

from trainer.common.errors import UserInputError
from trainer.core import metrics
from trainer.serving import preprocessing, tflite_metadata
from trainer.serving.saved_model import IMAGES_INPUT, SERVING_DEFAULT

# Batches of this many images go through the SavedModel while measuring parity.
_SAVED_MODEL_BATCH = 8


class Quantization(enum.Enum):
    """The TFLite conversions; `export.tflite_quantizations` takes these values."""

    FLOAT32 = "float32"
    FLOAT16 = "float16"  # float16 weights: dequantised to float32 on CPU, fp16 compute on the GPU delegate
    DYNAMIC_RANGE_INT8 = "dynamic_range_int8"  # int8 weights, float activations
    INT8 = "int8"  # int8 weights and activations, calibrated on training images

    @classmethod
    def parse_all(cls, values: Iterable[str]) -> tuple["Quantization", ...]:
        """Returns the members named by `values`, or raises UserInputError naming the gin binding."""
        if isinstance(values, str):
            values = (values,)
        parsed = []
        for value in values:
            try:
                parsed.append(value if isinstance(value, cls) else cls(value))
            except ValueError:
                valid = ", ".join(repr(member.value) for member in cls)
                raise UserInputError(
                    f"gin binding export.tflite_quantizations: expected a tuple of {{{valid}}}, received {value!r}."
                ) from None
        return tuple(dict.fromkeys(parsed))


def _fixed_size_module(model: keras.Model, input_size: tuple[int, int], size_multiple: int) -> tf.Module:
    """The model behind a fixed-size uint8 input, with the SavedModel's pre- and post-processing."""
    module = tf.Module(name="tflite_segmenter")
    # As in the SavedModel, only the variables are tracked: the converter saves the module, Keras tracing is slow.
    module.model_variables = list(model.variables)

    def segment(images: tf.Tensor) -> dict[str, tf.Tensor]:
        return preprocessing.predictions(preprocessing.segment_logits(model, images, size_multiple))

    height, width = input_size
    module.serve = tf.function(segment, input_signature=[tf.TensorSpec([1, height, width, 3], tf.uint8, IMAGES_INPUT)])
    return module


def convert(
    model: keras.Model,
    input_size: tuple[int, int],
    size_multiple: int,
    quantization: Quantization,
    representative_images: Sequence[np.ndarray] | None = None,
) -> bytes:
    """Converts `model` to a TFLite flatbuffer for uint8 images [1, *input_size, 3].

    Args:
      model: a built segmentation model (logits for images in [-1, 1]).
      input_size: (height, width) of the TFLite input.
      size_multiple: the model's output stride; the graph pads to a multiple of it and crops back.
      quantization: which conversion.
      representative_images: for `Quantization.INT8`: the calibration images, uint8 [1, H, W, 3] each.

    Raises:
      UserInputError: if INT8 is asked for without representative images.
    """
    module = _fixed_size_module(model, input_size, size_multiple)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([module.serve.get_concrete_function()], module)
    if quantization is Quantization.FLOAT16:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantization is Quantization.DYNAMIC_RANGE_INT8:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif quantization is Quantization.INT8:
        if representative_images is None:
            raise UserInputError("TFLite int8: expected representative (calibration) images, received None.")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([images] for images in representative_images)
        # Fails the conversion rather than silently leaving float ops in an "integer" model.
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return converter.convert()


def with_metadata(
    model_content: bytes, class_names: tuple[str, ...], quantization: Quantization, version: str
) -> bytes:
    """Adds the TFLite metadata (tensor descriptions, the label file) to a model from `convert`."""
    inputs, outputs = tflite_metadata.signature_tensor_names(model_content)
    descriptions = {
        IMAGES_INPUT: tflite_metadata.TensorDescription(
            IMAGES_INPUT,
            "RGB image, uint8 0-255; normalised to [-1, 1] inside the model.",
            color_space=tflite_metadata.COLOR_SPACE_RGB,
            value_range=(0.0, 255.0),
        ),
        preprocessing.CLASS_MAP: tflite_metadata.TensorDescription(
            preprocessing.CLASS_MAP,
            "The class id of every pixel (an index into labels.txt).",
            label_file_type=tflite_metadata.TENSOR_VALUE_LABELS,
        ),
        preprocessing.PROBABILITIES: tflite_metadata.TensorDescription(
            preprocessing.PROBABILITIES,
            "Per-pixel class probabilities (softmax); the last axis follows labels.txt.",
            color_space=tflite_metadata.COLOR_SPACE_GRAYSCALE,
            content_range=(1, 2),
            label_file_type=tflite_metadata.TENSOR_AXIS_LABELS,
        ),
    }
    metadata = tflite_metadata.build_metadata(
        name="DeepLab semantic segmentation",
        description=(
            f"Semantic segmentation into {len(class_names)} classes ({quantization.value} TFLite conversion). "
            "Input: uint8 RGB images; outputs: the class map and per-class probabilities."
        ),
        version=version,
        inputs=[descriptions[name] for name in inputs],
        outputs=[descriptions[name] for name in outputs],
    )
    return tflite_metadata.populate(model_content, metadata, class_names)


def interpreter(model_content: bytes) -> tf.lite.Interpreter:
    """Returns a ready `tf.lite.Interpreter` for `model_content`."""
    with warnings.catch_warnings():
        # TF 2.21 warns on every construction that LiteRT (`ai_edge_litert`) will replace tf.lite.Interpreter;
        # the API is the same, and this venv has no LiteRT.
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
        result = tf.lite.Interpreter(model_content=model_content)
    result.allocate_tensors()
    return result


def tflite_class_maps(model_content: bytes, images: np.ndarray) -> np.ndarray:
    """Runs the TFLite model on each uint8 image of [N, H, W, 3]; returns the class maps int32 [N, H, W]."""
    runner = interpreter(model_content).get_signature_runner(SERVING_DEFAULT)
    return np.stack([runner(**{IMAGES_INPUT: image[np.newaxis]})[preprocessing.CLASS_MAP][0] for image in images])


def saved_model_class_maps(saved_model_dir: str, images: np.ndarray) -> np.ndarray:
    """Runs the SavedModel's serving_default on uint8 images [N, H, W, 3]; returns class maps int32 [N, H, W]."""
    serve = tf.saved_model.load(saved_model_dir).signatures[SERVING_DEFAULT]
    batches = [
        serve(**{IMAGES_INPUT: tf.constant(images[start : start + _SAVED_MODEL_BATCH])})[preprocessing.CLASS_MAP]
        for start in range(0, len(images), _SAVED_MODEL_BATCH)
    ]
    return np.concatenate([batch.numpy() for batch in batches])


def _scores(labels: np.ndarray, class_maps: np.ndarray, num_classes: int, ignore_label: int) -> dict:
    results = metrics.segmentation_metrics(
        metrics.confusion_matrix(labels, class_maps, num_classes, ignore_label).numpy()
    )
    return {"miou": results["miou"], "pixel_accuracy": results["pixel_accuracy"]}


def parity_report(
    saved_model_dir: str,
    tflite_models: dict[str, bytes],
    images: np.ndarray,
    labels: np.ndarray,
    inside: np.ndarray,
    num_classes: int,
    ignore_label: int,
) -> dict:
    """Measures each TFLite model against the SavedModel (and both against the labels) on the same images.

    Args:
      saved_model_dir: the exported SavedModel.
      tflite_models: conversion name → TFLite flatbuffer.
      images: uint8 [N, H, W, 3] at the TFLite input size.
      labels: int [N, H, W] ground truth, `ignore_label` where unlabelled or padded.
      inside: bool [N, H, W], True on the pixels of the original images (False on padding).
      num_classes: number of classes.
      ignore_label: label value to skip.

    Returns:
      {"num_images", "num_pixels", "saved_model": {miou, pixel_accuracy}, "tflite": {name: {pixel_agreement,
      miou_vs_saved_model, miou, pixel_accuracy, size_bytes}}}: `pixel_agreement` is the fraction of image pixels
      where the class maps are equal; `miou_vs_saved_model` the mIoU with the SavedModel's map as ground truth.
    """
    reference = saved_model_class_maps(saved_model_dir, images)
    reference_as_labels = np.where(inside, reference, ignore_label)
    report = {
        "num_images": int(len(images)),
        "num_pixels": int(inside.sum()),
        "saved_model": _scores(labels, reference, num_classes, ignore_label),
        "tflite": {},
    }
    for name, content in tflite_models.items():
        class_maps = tflite_class_maps(content, images)
        report["tflite"][name] = {
            "pixel_agreement": float(np.mean(class_maps[inside] == reference[inside])),
            "miou_vs_saved_model": _scores(reference_as_labels, class_maps, num_classes, ignore_label)["miou"],
            **_scores(labels, class_maps, num_classes, ignore_label),
            "size_bytes": len(content),
        }
    return report


def format_parity(report: dict) -> str:
    """The parity report as a table, one row per TFLite conversion."""
    lines = [
        f"TFLite parity with the SavedModel on {report['num_images']} validation images "
        f"({report['num_pixels']} pixels); SavedModel mIoU {report['saved_model']['miou']:.4f}",
        f"  {'conversion':>20s}  {'agreement':>9s}  {'mIoU vs SM':>10s}  {'mIoU':>6s}  {'size':>10s}",
    ]
    for name, row in report["tflite"].items():
        lines.append(
            f"  {name:>20s}  {row['pixel_agreement']:9.4%}  {row['miou_vs_saved_model']:10.4f}  "
            f"{row['miou']:6.4f}  {row['size_bytes']:10,d}"
        )
    return "\n".join(lines)
