"""ONNX export with tf2onnx of the SavedModel's serving function, and running it in ONNX Runtime.

The ONNX model takes `images` uint8 [N, H, W, 3] (raw RGB, any batch N; H and W fixed at the export's input size)
and returns `class_map` int32 [N, H, W] and `probabilities` float32 [N, H, W, C], like the SavedModel's
`serving_default` (the same pre- and post-processing around the same weights). H and W must be static: with
unknown sizes tf2onnx writes the atrous (dilated) convolutions with `auto_pad=SAME_UPPER`, which ONNX Runtime
rejects for dilations; with known sizes it writes explicit pads. TensorRT builds an engine from the same file
(`trtexec --onnx=deeplab.onnx`).
"""

import numpy as np
import tf_keras as keras

from trainer.common.errors import UserInputError
from trainer.serving import preprocessing
from trainer.serving.preprocessing import IMAGES_INPUT

ONNX_SUBDIR = "onnx"
ONNX_FILE = "deeplab.onnx"
# Opset 17: the newest that tf2onnx 1.17 targets by default and that TensorRT 8.6+ and ONNX Runtime 1.14+ load.
OPSET = 17
# Images per ONNX Runtime call while measuring parity.
_BATCH = 8


def _require(module: str, package: str) -> None:
    try:
        __import__(module)
    except ImportError:
        raise UserInputError(
            f"export.formats 'onnx': expected {package} (`pip install -e '.[export]'`), received an environment "
            "without it."
        ) from None


def convert(model: keras.Model, input_size: tuple[int, int], size_multiple: int, output_file: str) -> None:
    """Converts `model`, behind the SavedModel's serving function at `input_size`, to ONNX (opset `OPSET`).

    Raises:
      UserInputError: if tf2onnx is not installed.
    """
    _require("tf2onnx", "tf2onnx")
    import tf2onnx

    module = preprocessing.fixed_size_module(model, input_size, size_multiple, batch_size=None)
    tf2onnx.convert.from_function(
        module.serve, input_signature=module.serve.input_signature, opset=OPSET, output_path=output_file
    )


def session(path: str) -> "onnxruntime.InferenceSession":  # noqa: F821
    """An ONNX Runtime session on the CPU for the model at `path`."""
    _require("onnxruntime", "onnxruntime")
    import onnxruntime

    return onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])


def onnx_class_maps(path: str, images: np.ndarray) -> np.ndarray:
    """Runs the ONNX model at `path` in ONNX Runtime on uint8 images [N, H, W, 3]; returns class maps [N, H, W]."""
    runner = session(path)
    batches = [
        runner.run([preprocessing.CLASS_MAP], {IMAGES_INPUT: images[start : start + _BATCH]})[0]
        for start in range(0, len(images), _BATCH)
    ]
    return np.concatenate(batches)
