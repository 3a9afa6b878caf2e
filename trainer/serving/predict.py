"""Writes the predicted label map and a colour overlay of image files, from a SavedModel or a training model_dir.

  python -m trainer.serving.predict --model=runs/quickstart --images='photos/*.png' --output_dir=/tmp/predictions \\
      --gin_bindings="inference.mode='slide'" --gin_bindings='inference.scales=(0.75, 1.0, 1.25)' \\
      --gin_bindings='inference.flip=True'

`--model` is either a SavedModel (its `serving_default` signature: `images` uint8 [N, H, W, 3] in,
`probabilities` [N, H, W, C] out; a directory of numbered exports takes the newest), or a training model_dir:
the model is rebuilt from its `operative_config.gin` and its latest checkpoint (or `--checkpoint`) restored.
Inference options are the `inference.*` gin bindings evaluation uses (whole image or sliding window,
multi-scale, flip); a model_dir starts from the settings it was evaluated with. Images with a side longer than
`tiling.tile_size` (1024) are predicted tile by tile, blending the scores where tiles overlap (`tiling.overlap`),
so memory follows the tile, not the image (10,000 x 10,000 px and more). For every image it writes
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
from trainer.common.images import colorize, overlay, to_uint8_tensor, to_unit_range, voc_palette
from trainer.core.config import parse_gin
from trainer.core.inference import InferenceConfig, LogitsFn, predict_logits
from trainer.data.pipeline import InputPipeline
from trainer.data.synthetic import synthetic_shapes
from trainer.models import BatchNormConfig, DeepLabV3Plus, configure_batch_norm
from trainer.serving.tiling import TilingConfig, predict_tiled
from trainer.storage import checkpoints

# Weight of the class colours in the overlay.
OVERLAY_ALPHA = 0.5


@dataclasses.dataclass(frozen=True)
class Predictor:
    """What prediction needs from a model: scores for float images in [-1, 1], the class count and colours."""

    scores_fn: LogitsFn
    num_classes: int
    palette: np.ndarray  # uint8 [num_classes, 3]
    inference_config: InferenceConfig


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
        pixels = to_uint8_tensor(images)
        # `loaded` owns the variables the signature reads; referencing it here keeps them alive.
        return loaded.signatures["serving_default"](images=pixels)["probabilities"]

    logging.info("Loaded the SavedModel %s (%d classes); the averaged scores are its probabilities.", path, num_classes)
    return Predictor(scores_fn, int(num_classes), voc_palette(num_classes), inference_config)


def _from_model_dir(
    model_dir: str,
    checkpoint: str | None,
    inference_config: InferenceConfig,
    crop_size: tuple[int, int],
    batch_norm: BatchNormConfig,
) -> Predictor:
    """Rebuilds the model the gin config (the model_dir's operative config) describes and restores it."""
    # The dataset description gives the class count and palette (synthetic_shapes regenerates its data if absent).
    info = _configured("run.dataset", synthetic_shapes)()
    model = _configured("run.model", DeepLabV3Plus)(num_classes=info.num_classes)
    configure_batch_norm(model, batch_norm)
    model(tf.zeros([1, *crop_size, 3]), training=False)
    if checkpoint is None:
        directory = os.path.join(model_dir, checkpoints.CHECKPOINT_SUBDIR)
        prefix = checkpoints.latest_checkpoint(directory, f"--model={model_dir}", "Train first, or pass --checkpoint.")
    else:
        prefix = checkpoints.resolve_checkpoint(checkpoint, "--checkpoint")
    checkpoints.restore_model_weights(model, prefix, f"--model={model_dir}")
    logging.info("Restored %s into %s (%d classes).", prefix, type(model).__name__, info.num_classes)
    palette = getattr(info, "palette", None)
    palette = voc_palette(info.num_classes) if palette is None else np.asarray(palette, np.uint8)
    return Predictor(
        lambda images: model(images, training=False),
        info.num_classes,
        palette,
        inference_config.with_default_crop(crop_size),
    )


def load_predictor(
    model: str,
    checkpoint: str | None = None,
    gin_files: Sequence[str] = (),
    gin_bindings: Sequence[str] = (),
) -> Predictor:
    """Loads `model` (a SavedModel, a directory of numbered exports, or a training model_dir) for prediction.

    Prediction's root: it resets gin, parses a model_dir's operative config first, then `gin_files` and
    `gin_bindings` (for the `inference.*` settings), and builds the configs from them here, once.

    Raises:
      UserInputError: if `model` is none of these, or has no checkpoint.
    """
    saved_model = _newest_export(model) if checkpoint is None else None
    operative_config = os.path.join(model, train_lib.OPERATIVE_CONFIG_FILE)
    if saved_model is None and not tf.io.gfile.exists(operative_config):
        raise UserInputError(
            f"--model={model}: expected a SavedModel directory (with saved_model.pb), a directory of numbered "
            f"exports, or a training model_dir (with {train_lib.OPERATIVE_CONFIG_FILE}; --checkpoint needs one), "
            "received neither."
        )
    gin.clear_config()
    if saved_model is None:
        # Configurables a later version of the trainer records but this one lacks only matter to training.
        gin.parse_config_file(operative_config, skip_unknown=True)
    parse_gin(gin_files, gin_bindings)
    inference_config = InferenceConfig()
    if saved_model is not None:
        return _from_saved_model(saved_model, inference_config)
    crop_size = tuple(InputPipeline().crop_size)
    return _from_model_dir(model, checkpoint, inference_config, crop_size, BatchNormConfig())


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


def _overlay_in_strips(pixels: np.ndarray, class_map: np.ndarray, palette: np.ndarray, rows: int) -> np.ndarray:
    """The overlay, `rows` rows at a time: its float intermediates stay the size of a strip, not the image's."""
    blended = np.empty_like(pixels)
    for top in range(0, pixels.shape[0], rows):
        strip = slice(top, top + rows)
        blended[strip] = overlay(pixels[strip], colorize(class_map[strip], palette), OVERLAY_ALPHA)
    return blended


def _tile_scores_fn(predictor: Predictor, tiling: TilingConfig) -> Callable[[tf.Tensor], tf.Tensor]:
    """The scores of one tile of pixels, compiled once for the tile's shape."""
    size = tiling.tile_size

    @tf.function(input_signature=[tf.TensorSpec([size, size, 3], tf.float32)])
    def tile_scores(pixels: tf.Tensor) -> tf.Tensor:
        images = to_unit_range(pixels)[tf.newaxis]
        return predict_logits(predictor.scores_fn, images, predictor.num_classes, predictor.inference_config)[0]

    return tile_scores


def predict_images(
    predictor: Predictor, image_paths: Sequence[str], output_dir: str, tiling: TilingConfig | None = None
) -> list[dict]:
    """Predicts every image and writes `<stem>_label.png` and `<stem>_overlay.png` into `output_dir`.

    An image with a side longer than `tiling.tile_size` is predicted tile by tile (`tiling.predict_tiled`),
    with one compiled function for every tile of every image.

    Returns:
      One `{"image", "label", "overlay"}` dict of paths per image.
    """
    stems = _output_stems(image_paths)
    tf.io.gfile.makedirs(output_dir)
    tiling = tiling or TilingConfig()
    tile_scores = None

    # Traced once per image size: the inference modes need a static height and width.
    @tf.function
    def class_map_fn(pixels: tf.Tensor) -> tf.Tensor:
        images = to_unit_range(pixels)[tf.newaxis]
        scores = predict_logits(predictor.scores_fn, images, predictor.num_classes, predictor.inference_config)
        return tf.argmax(scores[0], axis=-1, output_type=tf.int32)

    label_dtype = tf.uint8 if predictor.num_classes <= 256 else tf.uint16
    written = []
    for path, stem in zip(image_paths, stems, strict=True):
        pixels = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False).numpy()
        if tiling.needs_tiles(*pixels.shape[:2]):
            tile_scores = tile_scores or _tile_scores_fn(predictor, tiling)
            class_map = predict_tiled(tile_scores, pixels, predictor.num_classes, tiling)
        else:
            class_map = class_map_fn(tf.constant(pixels)).numpy()
        label_path = os.path.join(output_dir, f"{stem}_label.png")
        overlay_path = os.path.join(output_dir, f"{stem}_overlay.png")
        tf.io.write_file(label_path, tf.io.encode_png(class_map.astype(label_dtype.as_numpy_dtype)[..., np.newaxis]))
        blended = _overlay_in_strips(pixels, class_map, predictor.palette, tiling.tile_size)
        tf.io.write_file(overlay_path, tf.io.encode_png(blended))
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
            # Built after the gin files and bindings load_predictor parsed: `tiling.*` may be among them.
            written = predict_images(predictor, image_paths, values["output_dir"], TilingConfig())
        except UserInputError as error:
            logging.error("%s", error)
            sys.exit(f"error: {error}")
        print(f"Wrote label maps and overlays of {len(written)} images to {values['output_dir']}.")

    app.run(run)


if __name__ == "__main__":
    main()
