"""`--mode=export` and export at the end of training: which weights, the SavedModel, the other formats, parity.

Layout in the run directory:

    model_dir/export/<step>/          SavedModel (TF Serving version directory; `--model_base_path=model_dir/export`)
    model_dir/tflite/<step>/          deeplab_<conversion>.tflite (with metadata and labels), parity.json
    model_dir/onnx/<step>/            deeplab.onnx
    model_dir/tfjs/<step>/            model.json, weight shards, labels.txt
    model_dir/parity/<step>/          parity.json: every format against the SavedModel
"""

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterator

import gin
import numpy as np
import tensorflow as tf
import tf_keras as keras
from absl import logging

from trainer.cluster.tasks import TaskInfo
from trainer.common import validate
from trainer.common.errors import UserInputError
from trainer.common.files import write_json_atomically
from trainer.common.images import to_uint8
from trainer.data import schema
from trainer.data.info import DatasetInfo
from trainer.data.pipeline import InputPipeline
from trainer.serving import formats as export_formats
from trainer.serving import parity, preprocessing, saved_model, tfjs_export, tflite
from trainer.storage import checkpoints

TFLITE_SUBDIR = export_formats.TFLITE
PARITY_FILE = export_formats.PARITY_FILE
CHECKPOINT_CHOICES = ("latest", "best")
# Mid-grey: what the training pipeline pads with (0 in [-1, 1]).
_PAD_PIXEL = 128

# Swaps other weights (e.g. EMA averages) into the model for the duration of the export.
WeightsContext = Callable[[], contextlib.AbstractContextManager]


@gin.configurable("export")
@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """What to export; bound in gin as `export.<field>`.

    Attributes:
      formats: what to write, of 'saved_model' (always written: every other format is made from it or measured
        against it), 'tflite', 'onnx', 'tfjs'.
      at_end_of_training: export when `--mode=train` / `train_and_eval` finishes.
      checkpoint: `--mode=export` exports the 'latest' checkpoint (model_dir/checkpoints) or the 'best' one
        (model_dir/best).
      size_multiple: exported models pad images up to a multiple of this; None: the backbone's output stride.
      tflite_quantizations: TFLite conversions to write, of 'float32', 'float16', 'dynamic_range_int8', 'int8'
        (full integer); naming any implies 'tflite' in `formats`; 'tflite' with none names all four.
      tflite_input_size: (height, width) of the TFLite input, the ONNX input (batch stays dynamic) and the parity
        images; None: `input_pipeline.crop_size`.
      num_calibration_images: training images (from the input pipeline) that calibrate the int8 conversion.
      num_parity_images: validation images on which each format is compared with the SavedModel.
      tfjs_converter: the `tensorflowjs_converter` to run (a path or a name on PATH); None: the one on PATH, else
        the one `make tfjs-env` installs in `.venv-tfjs`.
      web_dir: the directory of the TF.js page and its Node scripts (`deploy/web`, with `npm ci` run in it), where
        the TF.js parity runs; None: this checkout's `deploy/web`.
    """

    formats: tuple[str, ...] = (export_formats.SAVED_MODEL,)
    at_end_of_training: bool = False
    checkpoint: str = "latest"
    size_multiple: int | None = None
    tflite_quantizations: tuple[str, ...] = ()
    tflite_input_size: tuple[int, int] | None = None
    num_calibration_images: int = 100
    num_parity_images: int = 100
    tfjs_converter: str | None = None
    web_dir: str | None = None

    def __post_init__(self):
        validate.choice("gin binding export.checkpoint", self.checkpoint, CHECKPOINT_CHOICES)
        if self.size_multiple is not None:
            validate.positive_int("gin binding export.size_multiple", self.size_multiple)
        object.__setattr__(self, "tflite_quantizations", tflite.Quantization.parse_all(self.tflite_quantizations))
        names = (self.formats,) if isinstance(self.formats, str) else tuple(self.formats)
        names = [validate.choice("gin binding export.formats", name, export_formats.FORMAT_CHOICES) for name in names]
        if self.tflite_quantizations:
            names.append(export_formats.TFLITE)
        elif export_formats.TFLITE in names:
            object.__setattr__(self, "tflite_quantizations", tuple(tflite.Quantization))
        # The SavedModel comes first: the other formats are made from it.
        object.__setattr__(self, "formats", tuple(dict.fromkeys([export_formats.SAVED_MODEL, *names])))
        if self.tflite_input_size is not None:
            size = validate.size_pair("gin binding export.tflite_input_size", self.tflite_input_size)
            object.__setattr__(self, "tflite_input_size", size)
        validate.positive_int("gin binding export.num_calibration_images", self.num_calibration_images)
        validate.positive_int("gin binding export.num_parity_images", self.num_parity_images)


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """Where an export went: the SavedModel, the TFLite files by conversion, every other format's file by format
    and variant (e.g. files['onnx']['float32']), the parity report (if any format besides the SavedModel)."""

    step: int
    saved_model_dir: str
    tflite_files: dict[str, str]
    parity: dict | None
    files: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)


def checkpoint_to_export(model_dir: str, which: str) -> str:
    """Returns the checkpoint prefix that `export.checkpoint` = `which` ('latest' or 'best') designates.

    Raises:
      UserInputError: if there is no such checkpoint.
    """
    subdir = checkpoints.BEST_SUBDIR if which == "best" else checkpoints.CHECKPOINT_SUBDIR
    return checkpoints.latest_checkpoint(
        os.path.join(model_dir, subdir),
        f"--mode=export with export.checkpoint={which!r}",
        f"Train first, or set the gin binding export.checkpoint to one of {CHECKPOINT_CHOICES}.",
    )


def restore_checkpoint_to_export(model: keras.Model, model_dir: str, config: ExportConfig) -> int:
    """`--mode=export`: restores into `model` the weights of the checkpoint `config.checkpoint` designates.

    Returns:
      The checkpoint's training step.

    Raises:
      UserInputError: there is no such checkpoint, it does not match the model, or its step is unknown.
    """
    path = checkpoint_to_export(model_dir, config.checkpoint)
    what = f"--mode=export with export.checkpoint={config.checkpoint!r}"
    step = checkpoints.restore_model_weights(model, path, what)
    if step is None:
        raise UserInputError(f"{what}: expected a global_step in {path} or a -<step> suffix, received neither.")
    logging.info("Exporting %s (step %d).", path, step)
    return step


@contextlib.contextmanager
def _float32_policy() -> Iterator[None]:
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _plain_copy(model: keras.Model, build_size: tuple[int, int], weights_context: WeightsContext | None) -> keras.Model:
    """A float32 copy of `model` outside any distribution strategy, with the weights seen in `weights_context`.

    Every worker must call this: reading synchronised variables (e.g. batch-norm statistics) of a
    multi-worker model is a collective operation. The copy computes in float32 whatever the training precision
    (mixed_bfloat16 on TPUs): serving CPUs and TFLite want float32 graphs, and the weights are float32 anyway.
    """
    with weights_context() if weights_context is not None else contextlib.nullcontext():
        weights = model.get_weights()
    with _float32_policy():
        try:
            copy = type(model).from_config(model.get_config())
        except (NotImplementedError, TypeError) as error:
            raise UserInputError(
                f"export: expected a model that rebuilds from its get_config(), received {type(model).__name__} "
                f"({error})."
            ) from None
        copy(tf.zeros([1, *build_size, 3]), training=False)
    copy.set_weights(weights)
    return copy


def _fit(array: np.ndarray, size: tuple[int, int], pad_value: int) -> np.ndarray:
    """The top-left `size` window of `array` [H, W, ...], padded with `pad_value` where the array is smaller."""
    height, width = size
    window = array[:height, :width]
    padding = [(0, height - window.shape[0]), (0, width - window.shape[1])] + [(0, 0)] * (array.ndim - 2)
    return np.pad(window, padding, constant_values=pad_value)


def calibration_images(
    info: DatasetInfo, input_pipeline: InputPipeline, size: tuple[int, int], count: int
) -> list[np.ndarray]:
    """`count` augmented training crops from the input pipeline, as uint8 [1, H, W, 3] at `size`."""
    dataset = input_pipeline.train_dataset(info, global_batch_size=1).take(count)
    return [_fit(to_uint8(images.numpy()[0]), size, _PAD_PIXEL)[np.newaxis] for images, _ in dataset]


def validation_images(info: DatasetInfo, size: tuple[int, int], count: int) -> tuple[np.ndarray, ...]:
    """The first `count` validation images, each its top-left `size` window padded with mid-grey.

    Returns:
      (images uint8 [N, H, W, 3], labels int32 [N, H, W] with the ignore label on padding, inside bool [N, H, W]
      True on image pixels).
    """
    dataset = tf.data.TFRecordDataset(sorted(info.eval_files)).take(count).map(schema.parse_example)
    images, labels, inside = [], [], []
    for image, label, _ in dataset:
        images.append(_fit(image.numpy(), size, _PAD_PIXEL))
        labels.append(_fit(label.numpy().astype(np.int32), size, info.ignore_label))
        inside.append(_fit(np.ones(label.shape, bool), size, False))
    return np.stack(images), np.stack(labels), np.stack(inside)


def _write_formats(
    model: keras.Model,
    model_dir: str,
    step: int,
    saved_model_dir: str,
    size_multiple: int,
    info: DatasetInfo,
    input_pipeline: InputPipeline,
    config: ExportConfig,
) -> list[export_formats.Artefact]:
    """Writes every format of `config.formats` besides the SavedModel; returns them in that order."""
    input_size = config.tflite_input_size or tuple(input_pipeline.crop_size)
    artefacts = []
    if export_formats.TFLITE in config.formats:
        artefacts += export_formats.write_tflite(
            model,
            export_formats.step_directory(model_dir, TFLITE_SUBDIR, step),
            input_size,
            size_multiple,
            config.tflite_quantizations,
            info.class_names,
            str(step),
            lambda: calibration_images(info, input_pipeline, input_size, config.num_calibration_images),
        )
    if export_formats.ONNX in config.formats:
        directory = export_formats.step_directory(model_dir, export_formats.ONNX, step)
        artefacts.append(export_formats.write_onnx(model, directory, input_size, size_multiple))
    if export_formats.TFJS in config.formats:
        directory = export_formats.step_directory(model_dir, export_formats.TFJS, step)
        web_dir = config.web_dir or tfjs_export.DEFAULT_WEB_DIR
        artefacts.append(
            export_formats.write_tfjs(saved_model_dir, directory, info.class_names, config.tfjs_converter, web_dir)
        )
    return artefacts


def _parity(
    artefacts: list[export_formats.Artefact],
    model_dir: str,
    step: int,
    saved_model_dir: str,
    input_size: tuple[int, int],
    info: DatasetInfo,
    config: ExportConfig,
) -> dict:
    """Measures every artefact against the SavedModel; logs the table and writes parity.json."""
    images, labels, inside = validation_images(info, input_size, config.num_parity_images)
    report = {
        "step": step,
        "saved_model": saved_model_dir,
        "input_size": list(input_size),
        "images": "top-left input_size window of each validation image, padded with mid-grey",
        "files": {
            artefact.variant: artefact.path for artefact in artefacts if artefact.format == export_formats.TFLITE
        },
        **export_formats.measure(
            artefacts,
            parity.ParityReport(saved_model_dir, images, labels, inside, info.num_classes, info.ignore_label),
        ),
    }
    logging.info("%s", parity.format_parity(report))
    write_json_atomically(
        os.path.join(export_formats.step_directory(model_dir, export_formats.PARITY_SUBDIR, step), PARITY_FILE), report
    )
    if export_formats.TFLITE in config.formats:
        # Where the TFLite-only export wrote it before the other formats existed.
        write_json_atomically(os.path.join(model_dir, TFLITE_SUBDIR, str(step), PARITY_FILE), report)
    return report


def export_model(
    model: keras.Model,
    model_dir: str,
    step: int,
    info: DatasetInfo,
    input_pipeline: InputPipeline,
    config: ExportConfig,
    task: TaskInfo | None = None,
    weights_context: WeightsContext | None = None,
) -> ExportResult | None:
    """Exports the model's current weights: the SavedModel, then the TFLite conversions asked for.

    Args:
      model: the trained model (may live under a distribution strategy).
      model_dir: the run directory; exports go under `export/<step>` and `tflite/<step>`.
      step: the training step of the weights.
      info: the dataset (class names, validation files for the parity report).
      input_pipeline: its crop size is the default TFLite input size; it draws the int8 calibration images.
      config: what to export (`export.*`, built at the root).
      task: this process's role; only the chief writes (every worker must call, see `_plain_copy`).
      weights_context: returns a context manager in which the model holds the weights to export (e.g. EMA
        averages); None exports the weights as they are.

    Returns:
      Where everything went, on the chief; None on other workers.
    """
    copy = _plain_copy(model, tuple(input_pipeline.crop_size), weights_context)
    if task is not None and not task.is_chief:
        return None
    size_multiple = config.size_multiple or preprocessing.size_multiple(copy)
    saved_model_dir = saved_model.export_saved_model(copy, model_dir, step, info.class_names, size_multiple)
    artefacts = _write_formats(copy, model_dir, step, saved_model_dir, size_multiple, info, input_pipeline, config)
    report = None
    if artefacts:
        input_size = config.tflite_input_size or tuple(input_pipeline.crop_size)
        report = _parity(artefacts, model_dir, step, saved_model_dir, input_size, info, config)
    files = {}
    for artefact in artefacts:
        files.setdefault(artefact.format, {})[artefact.variant] = artefact.path
    return ExportResult(
        step=step,
        saved_model_dir=saved_model_dir,
        tflite_files=files.get(TFLITE_SUBDIR, {}),
        parity=report,
        files=files,
    )
