"""Writes the predicted label map and a colour overlay of image files, from a SavedModel or a training model_dir.

  python -m trainer.serving.predict --model=runs/quickstart --images='photos/*.png' --output_dir=/tmp/predictions \\
      --gin_bindings="inference.mode='slide'" --gin_bindings='inference.scales=(0.75, 1.0, 1.25)' \\
      --gin_bindings='inference.flip=True'

`--model` is either a SavedModel (its `serving_default` signature: `images` uint8 [N, H, W, 3] in,
`probabilities` [N, H, W, C] out; a directory of numbered exports takes the newest), or a training model_dir:
the model is rebuilt from its `operative_config.gin` and its latest checkpoint (or `--checkpoint`) restored.
Inference options are the `inference.*` gin bindings evaluation uses (whole image or sliding window,
multi-scale, flip); a model_dir starts from the settings it was evaluated with. For every image it writes
`<stem>_label.png` (class ids: 8-bit, 16-bit above 256 classes) and `<stem>_overlay.png` (the image blended
half and half with the class colours: the dataset's palette, or a default one).
"""

import dataclasses
import os
import sys
from collections.abc import Callable, Sequence

import gin
import numpy as np
import tensorflow as tf
from absl import app, flags, logging

from trainer import train_lib  # train_lib also registers every configurable the config names
from trainer.common.errors import UserInputError
from trainer.core import evaluation
from trainer.core.config import parse_gin
from trainer.core.inference import InferenceConfig, LogitsFn, predict_logits
from trainer.data.pipeline import InputPipeline
from trainer.data.synthetic import synthetic_shapes
from trainer.models import DeepLabV3Plus
from trainer.storage.checkpoints import CHECKPOINT_SUBDIR

# Weight of the class colours in the overlay.
OVERLAY_ALPHA = 0.5


@dataclasses.dataclass(frozen=True)
class Predictor:
    """What prediction needs from a model: scores for float images in [-1, 1], the class count and colours."""

    scores_fn: LogitsFn
    num_classes: int
    palette: np.ndarray  # uint8 [num_classes, 3]
    inference_config: InferenceConfig


def default_palette(num_classes: int) -> np.ndarray:
    """The PASCAL VOC colour map (class 0 black, then distinct colours): uint8 [num_classes, 3]."""
    palette = np.zeros([num_classes, 3], np.uint8)
    for index in range(num_classes):
        value, colour = index, [0, 0, 0]
        for shift in range(7, -1, -1):
            for channel in range(3):
                colour[channel] |= ((value >> channel) & 1) << shift
            value >>= 3
        palette[index] = colour
    return palette


def _colorize(class_map: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Class ids [H, W] to RGB colours [H, W, 3] (uint8)."""
    return palette[class_map]


def _configured(binding: str, default: Callable) -> Callable:
    """The configurable a `run.<parameter>` binding names (e.g. `run.model = @DeepLabV3`), or `default`."""
    try:
        return gin.query_parameter(binding).scoped_configurable_fn
    except ValueError:
        return default


def _newest_export(path: str) -> str | None:
    """`path` if it is a SavedModel, else its highest-numbered SavedModel subdirectory (model_dir/export/<step>)."""
    if tf.saved_model.contains_saved_model(path):
        return path
    if not tf.io.gfile.isdir(path):
        return None
    steps = [name.rstrip("/") for name in tf.io.gfile.listdir(path) if name.rstrip("/").isdigit()]
    for step in sorted(steps, key=int, reverse=True):
        candidate = os.path.join(path, step)
        if tf.saved_model.contains_saved_model(candidate):
            return candidate
    return None


def _from_saved_model(path: str, inference_config: InferenceConfig) -> Predictor:
    loaded = tf.saved_model.load(path)
    signature = loaded.signatures.get("serving_default")
    if signature is None:
        raise UserInputError(f"--model={path}: expected a SavedModel with a 'serving_default' signature, found none.")
    _, inputs = signature.structured_input_signature
    outputs = signature.structured_outputs
    if "images" not in inputs or "probabilities" not in outputs:
        raise UserInputError(
            f"--model={path}: expected serving_default(images: uint8 [N, H, W, 3]) -> {{'probabilities': ...}}, "
            f"received inputs {sorted(inputs)} and outputs {sorted(outputs)}."
        )
    num_classes = outputs["probabilities"].shape[-1]
    if num_classes is None:
        num_classes = signature(images=tf.zeros([1, 32, 32, 3], tf.uint8))["probabilities"].shape[-1]

    def scores_fn(images: tf.Tensor) -> tf.Tensor:
        # The signature takes the uint8 pixels the [-1, 1] images came from (resized ones rounded back).
        pixels = tf.cast(tf.clip_by_value(tf.round((images + 1.0) * 127.5), 0.0, 255.0), tf.uint8)
        # `loaded` owns the variables the signature reads; referencing it here keeps them alive.
        return loaded.signatures["serving_default"](images=pixels)["probabilities"]

    logging.info("Loaded the SavedModel %s (%d classes); the averaged scores are its probabilities.", path, num_classes)
    return Predictor(scores_fn, int(num_classes), default_palette(num_classes), inference_config)


def _from_model_dir(model_dir: str, checkpoint: str | None, inference_bindings: Callable[[], None]) -> Predictor:
    gin.clear_config()
    # Configurables a later version of the trainer records but this one lacks only matter to training.
    gin.parse_config_file(os.path.join(model_dir, train_lib.OPERATIVE_CONFIG_FILE), skip_unknown=True)
    inference_bindings()
    # The dataset description gives the class count and palette (synthetic_shapes regenerates its data if absent).
    info = _configured("run.dataset", synthetic_shapes)()
    model = _configured("run.model", DeepLabV3Plus)(num_classes=info.num_classes)
    crop_size = InputPipeline().crop_size
    model(tf.zeros([1, *crop_size, 3]), training=False)
    if checkpoint is None:
        checkpoint = tf.train.latest_checkpoint(os.path.join(model_dir, CHECKPOINT_SUBDIR))
        if checkpoint is None:
            raise UserInputError(
                f"--model={model_dir}: expected a checkpoint in {os.path.join(model_dir, CHECKPOINT_SUBDIR)}, found "
                "none. Train first, or pass --checkpoint."
            )
    else:
        checkpoint = evaluation.resolve_checkpoint(checkpoint, model_dir)
    tf.train.Checkpoint(model=model).restore(checkpoint).assert_existing_objects_matched().expect_partial()
    logging.info("Restored %s into %s (%d classes).", checkpoint, type(model).__name__, info.num_classes)
    palette = getattr(info, "palette", None)
    palette = default_palette(info.num_classes) if palette is None else np.asarray(palette, np.uint8)
    return Predictor(
        lambda images: model(images, training=False),
        info.num_classes,
        palette,
        InferenceConfig().with_default_crop(crop_size),
    )


def load_predictor(
    model: str,
    checkpoint: str | None = None,
    gin_files: Sequence[str] = (),
    gin_bindings: Sequence[str] = (),
) -> Predictor:
    """Loads `model` (a SavedModel, a directory of numbered exports, or a training model_dir) for prediction.

    Resets gin: a model_dir's operative config is parsed first, then `gin_files` and `gin_bindings` (for the
    `inference.*` settings).

    Raises:
      UserInputError: if `model` is none of these, or has no checkpoint.
    """

    def inference_bindings() -> None:
        parse_gin(gin_files, gin_bindings)

    if checkpoint is None:
        saved_model = _newest_export(model)
        if saved_model is not None:
            gin.clear_config()
            inference_bindings()
            return _from_saved_model(saved_model, InferenceConfig())
    if tf.io.gfile.exists(os.path.join(model, train_lib.OPERATIVE_CONFIG_FILE)):
        return _from_model_dir(model, checkpoint, inference_bindings)
    raise UserInputError(
        f"--model={model}: expected a SavedModel directory (with saved_model.pb), a directory of numbered exports, "
        f"or a training model_dir (with {train_lib.OPERATIVE_CONFIG_FILE}; --checkpoint needs one), received "
        "neither."
    )


def _output_stems(image_paths: Sequence[str]) -> list[str]:
    stems = [os.path.splitext(os.path.basename(path))[0] for path in image_paths]
    seen = {}
    for stem, path in zip(stems, image_paths, strict=True):
        if stem in seen:
            raise UserInputError(
                f"--images: expected distinct file names (outputs are named after them), received {seen[stem]} "
                f"and {path}."
            )
        seen[stem] = path
    return stems


def predict_images(predictor: Predictor, image_paths: Sequence[str], output_dir: str) -> list[dict]:
    """Predicts every image and writes `<stem>_label.png` and `<stem>_overlay.png` into `output_dir`.

    Returns:
      One `{"image", "label", "overlay"}` dict of paths per image.
    """
    stems = _output_stems(image_paths)
    tf.io.gfile.makedirs(output_dir)

    # Traced once per image size: the inference modes need a static height and width.
    @tf.function
    def class_map_fn(pixels: tf.Tensor) -> tf.Tensor:
        images = tf.cast(pixels, tf.float32)[tf.newaxis] / 127.5 - 1.0
        scores = predict_logits(predictor.scores_fn, images, predictor.num_classes, predictor.inference_config)
        return tf.argmax(scores[0], axis=-1, output_type=tf.int32)

    label_dtype = tf.uint8 if predictor.num_classes <= 256 else tf.uint16
    written = []
    for path, stem in zip(image_paths, stems, strict=True):
        pixels = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        class_map = class_map_fn(pixels)
        label_path = os.path.join(output_dir, f"{stem}_label.png")
        overlay_path = os.path.join(output_dir, f"{stem}_overlay.png")
        tf.io.write_file(label_path, tf.io.encode_png(tf.cast(class_map, label_dtype)[..., tf.newaxis]))
        colours = _colorize(class_map.numpy(), predictor.palette).astype(np.float32)
        overlay = np.rint((1 - OVERLAY_ALPHA) * pixels.numpy() + OVERLAY_ALPHA * colours).astype(np.uint8)
        tf.io.write_file(overlay_path, tf.io.encode_png(overlay))
        written.append({"image": path, "label": label_path, "overlay": overlay_path})
        logging.info("%s -> %s, %s", path, label_path, overlay_path)
    return written


def _define_flags() -> dict:
    # Defined when run as a program, not on import: other tools define flags of the same names (gin_file,
    # gin_bindings), and a process (the test suite) may import several of them.
    return {
        "model": flags.DEFINE_string(
            "model", None, "A SavedModel (or model_dir/export) or a training model_dir.", required=True
        ),
        "images": flags.DEFINE_string("images", None, "Glob of the images, e.g. 'photos/*.jpg'.", required=True),
        "output_dir": flags.DEFINE_string("output_dir", None, "Where the PNGs go.", required=True),
        "checkpoint": flags.DEFINE_string(
            "checkpoint", None, "With a model_dir: a checkpoint prefix or directory (e.g. model_dir/best)."
        ),
        "gin_file": flags.DEFINE_multi_string("gin_file", [], "Gin files with inference.* settings."),
        "gin_bindings": flags.DEFINE_multi_string(
            "gin_bindings", [], "Gin bindings, e.g. \"inference.mode='slide'\" or 'inference.flip=True'."
        ),
    }


def main() -> None:
    """`python -m trainer.serving.predict`."""
    flag_values = _define_flags()

    def run(argv: list[str]) -> None:
        if len(argv) > 1:
            raise app.UsageError(f"Unexpected positional arguments: {argv[1:]}.")
        values = {name: flag.value for name, flag in flag_values.items()}
        try:
            image_paths = sorted(tf.io.gfile.glob(values["images"]))
            if not image_paths:
                raise UserInputError(
                    f"--images={values['images']}: expected the pattern to match image files, none did."
                )
            predictor = load_predictor(
                values["model"], values["checkpoint"], values["gin_file"], values["gin_bindings"]
            )
            written = predict_images(predictor, image_paths, values["output_dir"])
        except UserInputError as error:
            logging.error("%s", error)
            sys.exit(f"error: {error}")
        print(f"Wrote label maps and overlays of {len(written)} images to {values['output_dir']}.")

    app.run(run)


if __name__ == "__main__":
    main()
