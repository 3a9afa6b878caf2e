"""TensorFlow.js export: `tensorflowjs_converter` turns the SavedModel's serving_default into a graph model, and
Node runs it with `@tensorflow/tfjs` (CPU backend) for the parity report.

The converter pins an older TensorFlow than this project's, so it lives in its own virtual environment
(`make tfjs-env` builds `.venv-tfjs`) and runs as a child process; the main environment stays untouched. The
graph model takes `images` int32 [N, H, W, 3] (RGB 0-255; TF.js has no uint8 tensors) of any size and returns
`class_map` and `probabilities`, like the SavedModel; `labels.txt` beside `model.json` holds the class names.
"""

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from trainer.common.errors import UserInputError
from trainer.serving.saved_model import LABELS_ASSET, SERVING_DEFAULT

TFJS_SUBDIR = "tfjs"
CONVERTER = "tensorflowjs_converter"
# The static page and the Node scripts (deploy/web in a checkout of this repository).
DEFAULT_WEB_DIR = str(Path(__file__).resolve().parents[2] / "deploy" / "web")
# Where `make tfjs-env` installs the converter, when it is not on PATH.
_REPOSITORY_CONVERTER = Path(__file__).resolve().parents[2] / ".venv-tfjs" / "bin" / CONVERTER


def find_converter(converter: str | None) -> str | None:
    """The converter to run: `converter` (a path or a name on PATH), else tensorflowjs_converter on PATH, else the
    one `make tfjs-env` installed in this checkout; None if there is none."""
    if converter is not None:
        return shutil.which(converter)
    return shutil.which(CONVERTER) or (str(_REPOSITORY_CONVERTER) if _REPOSITORY_CONVERTER.exists() else None)


def convert(saved_model_dir: str, output_dir: str, class_names: tuple[str, ...], converter: str | None) -> list[str]:
    """Writes the TF.js graph model of the SavedModel's serving_default (model.json, weight shards, labels.txt).

    Returns:
      The files written.

    Raises:
      UserInputError: if no converter is found; RuntimeError if the conversion fails.
    """
    executable = find_converter(converter)
    if executable is None:
        raise UserInputError(
            f"export.formats 'tfjs': expected the TF.js converter (gin binding export.tfjs_converter, "
            f"{CONVERTER} on PATH, or {_REPOSITORY_CONVERTER} from `make tfjs-env`), received "
            f"{converter or 'none of them'}."
        )
    command = [
        executable,
        "--input_format=tf_saved_model",
        "--output_format=tfjs_graph_model",
        f"--signature_name={SERVING_DEFAULT}",
        "--saved_model_tags=serve",
        saved_model_dir,
        output_dir,
    ]
    # The converter's own TensorFlow must not see this process's import path.
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run(command, capture_output=True, text=True, check=False, env=environment)
    if result.returncode != 0 or not os.path.exists(os.path.join(output_dir, "model.json")):
        raise RuntimeError(f"{CONVERTER} failed (exit code {result.returncode}):\n{result.stderr[-4000:]}")
    with open(os.path.join(output_dir, LABELS_ASSET), "w") as f:
        f.write("".join(f"{name}\n" for name in class_names))
    return sorted(os.path.join(output_dir, name) for name in os.listdir(output_dir))


def model_size_bytes(model_dir: str) -> int:
    """Bytes a browser downloads for the graph model: model.json and its weight shards."""
    return sum(
        os.path.getsize(os.path.join(model_dir, name))
        for name in os.listdir(model_dir)
        if name == "model.json" or name.endswith(".bin")
    )


def _node_setup(web_dir: str) -> str:
    node = shutil.which("node")
    tfjs = os.path.join(web_dir, "node_modules", "@tensorflow", "tfjs", "package.json")
    if node is None or not os.path.exists(tfjs):
        raise UserInputError(
            f"export.formats 'tfjs': the parity check runs the model in Node with @tensorflow/tfjs; expected node on "
            f"PATH and {tfjs} (`npm ci --prefix {web_dir}`; gin binding export.web_dir), received "
            f"node={node}, @tensorflow/tfjs {'present' if os.path.exists(tfjs) else 'missing'}."
        )
    return node


def tfjs_class_maps(model_dir: str, images: np.ndarray, web_dir: str = DEFAULT_WEB_DIR) -> np.ndarray:
    """Runs the graph model in Node (@tensorflow/tfjs, CPU backend) on uint8 images [N, H, W, 3]; returns the
    class maps int32 [N, H, W]."""
    node = _node_setup(web_dir)
    count, height, width, _ = images.shape
    with tempfile.TemporaryDirectory() as scratch:
        images_file, maps_file = os.path.join(scratch, "images.u8"), os.path.join(scratch, "class_maps.i32")
        np.ascontiguousarray(images, np.uint8).tofile(images_file)
        command = [node, os.path.join(web_dir, "parity.mjs"), model_dir, images_file, str(count), str(height)]
        result = subprocess.run(
            [*command, str(width), maps_file], capture_output=True, text=True, check=False, cwd=web_dir
        )
        if result.returncode != 0:
            raise RuntimeError(f"TF.js parity in Node failed (exit code {result.returncode}):\n{result.stderr[-4000:]}")
        return np.fromfile(maps_file, "<i4").reshape(count, height, width)
