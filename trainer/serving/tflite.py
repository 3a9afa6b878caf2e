"""TFLite conversion at a fixed input size (float32, float16, dynamic-range int8, full-integer int8), and running
the conversions in LiteRT (`ai_edge_litert`, which replaces the deprecated `tf.lite.Interpreter`).

Every TFLite model takes `images` uint8 [1, H, W, 3] (raw RGB; normalisation is in the graph, as in the
SavedModel) and returns `class_map` int32 [1, H, W] and `probabilities` float32 [1, H, W, C]; the class names
are in its metadata (see `tflite_metadata`). In the full-integer model every op between the input's
uint8 → int8 quantisation and the probabilities' dequantisation runs in int8.
"""

import enum
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import tensorflow as tf
import tf_keras as keras

from trainer.common.errors import UserInputError
from trainer.serving import preprocessing, tflite_metadata
from trainer.serving.saved_model import IMAGES_INPUT, SERVING_DEFAULT

if TYPE_CHECKING:
    from ai_edge_litert.interpreter import Interpreter


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
    module = preprocessing.fixed_size_module(model, input_size, size_multiple, batch_size=1)
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


def interpreter(model_content: bytes) -> "Interpreter":
    """Returns a ready LiteRT interpreter (`ai_edge_litert`, the maintained TFLite runtime) for `model_content`.

    Raises:
      UserInputError: if `ai-edge-litert` (the `[export]` extra) is not installed.
    """
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise UserInputError(
            "TFLite parity: expected the LiteRT runtime (`pip install ai-edge-litert`, or the [export] extra: "
            "`pip install -e '.[export]'`), received an environment without it."
        ) from None
    result = Interpreter(model_content=model_content)
    result.allocate_tensors()
    return result


def tflite_class_maps(model_content: bytes, images: np.ndarray) -> np.ndarray:
    """Runs the TFLite model in LiteRT on each uint8 image of [N, H, W, 3]; returns class maps int32 [N, H, W]."""
    runner = interpreter(model_content).get_signature_runner(SERVING_DEFAULT)
    return np.stack([runner(**{IMAGES_INPUT: image[np.newaxis]})[preprocessing.CLASS_MAP][0] for image in images])
