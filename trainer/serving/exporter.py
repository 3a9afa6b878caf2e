"""`--mode=export` and export at the end of training: which weights, the SavedModel, the TFLite models, parity.

Layout in the run directory:

    model_dir/export/<step>/          SavedModel (TF Serving version directory; `--model_base_path=model_dir/export`)
    model_dir/tflite/<step>/          deeplab_<conversion>.tflite (with metadata and labels), parity.json
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
from trainer.common.files import write_atomically, write_json_atomically
from trainer.common.images import to_uint8
from trainer.data import schema
from trainer.data.info import DatasetInfo
from trainer.data.pipeline import InputPipeline
from trainer.serving import preprocessing, saved_model, tflite
from trainer.storage import checkpoints

TFLITE_SUBDIR = "tflite"
PARITY_FILE = "parity.json"
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
      at_end_of_training: export when `--mode=train` / `train_and_eval` finishes.
      checkpoint: `--mode=export` exports the 'latest' checkpoint (model_dir/checkpoints) or the 'best' one
        (model_dir/best).
      size_multiple: exported models pad images up to a multiple of this; None: the backbone's output stride.
      tflite_quantizations: TFLite conversions to write, of 'float32', 'float16', 'dynamic_range_int8', 'int8'
        (full integer); none by default.
      tflite_input_size: (height, width) of the TFLite input; None: `input_pipeline.crop_size`.
      num_calibration_images: training images (from the input pipeline) that calibrate the int8 conversion.
      num_parity_images: validation images on which each TFLite model is compared with the SavedModel.
    """

    at_end_of_training: bool = False
    checkpoint: str = "latest"
    size_multiple: int | None = None
    tflite_quantizations: tuple[str, ...] = ()
    tflite_input_size: tuple[int, int] | None = None
    num_calibration_images: int = 100
    num_parity_images: int = 100

    def __post_init__(self):
        validate.choice("gin binding export.checkpoint", self.checkpoint, CHECKPOINT_CHOICES)
        if self.size_multiple is not None:
            validate.positive_int("gin binding export.size_multiple", self.size_multiple)
        object.__setattr__(self, "tflite_quantizations", tflite.Quantization.parse_all(self.tflite_quantizations))
        if self.tflite_input_size is not None:
            size = validate.size_pair("gin binding export.tflite_input_size", self.tflite_input_size)
            object.__setattr__(self, "tflite_input_size", size)
        validate.positive_int("gin binding export.num_calibration_images", self.num_calibration_images)
        validate.positive_int("gin binding export.num_parity_images", self.num_parity_images)


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """Where an export went: the SavedModel, the TFLite files by conversion, the parity report (if any)."""

    step: int
    saved_model_dir: str
    tflite_files: dict[str, str]
    parity: dict | None


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


def _export_tflite(
    model: keras.Model,
    model_dir: str,
    step: int,
    saved_model_dir: str,
    size_multiple: int,
    info: DatasetInfo,
    input_pipeline: InputPipeline,
    config: ExportConfig,
) -> tuple[dict[str, str], dict]:
    """Writes the TFLite conversions and their parity report; returns (files by conversion, report)."""
    input_size = config.tflite_input_size or tuple(input_pipeline.crop_size)
    directory = os.path.join(model_dir, TFLITE_SUBDIR, str(step))
    tf.io.gfile.makedirs(directory)
    calibration = None
    contents, files = {}, {}
    for quantization in config.tflite_quantizations:
        if quantization is tflite.Quantization.INT8 and calibration is None:
            calibration = calibration_images(info, input_pipeline, input_size, config.num_calibration_images)
        content = tflite.convert(
            model,
            input_size,
            size_multiple,
            quantization,
            representative_images=calibration if quantization is tflite.Quantization.INT8 else None,
        )
        contents[quantization.value] = tflite.with_metadata(content, info.class_names, quantization, str(step))
        files[quantization.value] = os.path.join(directory, f"deeplab_{quantization.value}.tflite")
        write_atomically(files[quantization.value], contents[quantization.value])
        logging.info("Wrote %s (%d bytes).", files[quantization.value], len(contents[quantization.value]))
    images, labels, inside = validation_images(info, input_size, config.num_parity_images)
    report = {
        "step": step,
        "saved_model": saved_model_dir,
        "input_size": list(input_size),
        "images": "top-left input_size window of each validation image, padded with mid-grey",
        "files": files,
        **tflite.parity_report(saved_model_dir, contents, images, labels, inside, info.num_classes, info.ignore_label),
    }
    logging.info("%s", tflite.format_parity(report))
    write_json_atomically(os.path.join(directory, PARITY_FILE), report)
    return files, report


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
    files, report = {}, None
    if config.tflite_quantizations:
        files, report = _export_tflite(
            copy, model_dir, step, saved_model_dir, size_multiple, info, input_pipeline, config
        )
    return ExportResult(step=step, saved_model_dir=saved_model_dir, tflite_files=files, parity=report)
