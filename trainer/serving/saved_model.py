"""SavedModel export for TF Serving: numeric version directories, two signatures, preprocessing in the graph.

`model_dir/export/<step>/` is what TF Serving's `--model_base_path` watches. Signatures:

- `serving_default(images: uint8 [N, H, W, 3])`, any H and W;
- `serve_encoded(image_bytes: string [N])`, JPEG/PNG bytes (TF Serving's REST API takes them as `{"b64": ...}`);

both return `class_map` int32 [N, H, W] and `probabilities` float32 [N, H, W, C]. The class names travel with
the model as the asset `labels.txt`, one per line in class-id order.
"""

import os

import tensorflow as tf
import tf_keras as keras
from absl import logging

from trainer.serving import preprocessing

EXPORT_SUBDIR = "export"
SERVING_DEFAULT = "serving_default"
SERVE_ENCODED = "serve_encoded"
IMAGES_INPUT = preprocessing.IMAGES_INPUT
IMAGE_BYTES_INPUT = "image_bytes"
LABELS_ASSET = "labels.txt"


def serving_module(model: keras.Model, labels_file: str, size_multiple: int) -> tf.Module:
    """What the SavedModel holds: the model's variables, the class names and the two serving functions."""
    module = tf.Module(name="segmentation_serving")
    # The functions capture the Keras model; only its variables are tracked. Saving the model itself would also
    # trace every layer's Keras call functions, which serving never uses (and which double the export time).
    module.model_variables = list(model.variables)
    module.labels = tf.saved_model.Asset(labels_file)

    def serve_images(images: tf.Tensor) -> dict[str, tf.Tensor]:
        return preprocessing.predictions(preprocessing.segment_logits(model, images, size_multiple))

    def serve_encoded(image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        images, sizes = preprocessing.decode_images(image_bytes)
        return preprocessing.segment_padded_batch(model, images, sizes, size_multiple)

    module.serve_images = tf.function(
        serve_images, input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name=IMAGES_INPUT)]
    )
    module.serve_encoded = tf.function(
        serve_encoded, input_signature=[tf.TensorSpec([None], tf.string, name=IMAGE_BYTES_INPUT)]
    )
    return module


def version_directory(model_dir: str, step: int) -> str:
    """Returns `model_dir/export/<step>`, the version directory TF Serving loads for `step`."""
    return os.path.join(model_dir, EXPORT_SUBDIR, str(step))


def export_saved_model(
    model: keras.Model, model_dir: str, step: int, class_names: tuple[str, ...], size_multiple: int
) -> str:
    """Writes the serving SavedModel of `model` to `model_dir/export/<step>/` and returns that directory.

    It is written to a temporary sibling and renamed into place, so TF Serving never loads half a model; an
    existing export of the same step is replaced.

    Args:
      model: a built segmentation model returning logits [N, H, W, C] for images in [-1, 1].
      model_dir: the run directory.
      step: the training step of the weights; the version number.
      class_names: one name per class, written to the asset `labels.txt`.
      size_multiple: image sizes are padded up to a multiple of this (the model's output stride) for inference.
    """
    final_dir = version_directory(model_dir, step)
    base_dir = os.path.dirname(final_dir)
    # A non-numeric name: TF Serving only considers numeric version directories, so it ignores this one.
    temporary_dir = os.path.join(base_dir, f".tmp-{step}-{os.getpid()}")
    tf.io.gfile.makedirs(temporary_dir)
    try:
        labels_file = os.path.join(temporary_dir, LABELS_ASSET)
        with tf.io.gfile.GFile(labels_file, "w") as f:
            f.write("".join(f"{name}\n" for name in class_names))
        module = serving_module(model, labels_file, size_multiple)
        signatures = {
            SERVING_DEFAULT: module.serve_images.get_concrete_function(),
            SERVE_ENCODED: module.serve_encoded.get_concrete_function(),
        }
        saved_dir = os.path.join(temporary_dir, "saved_model")
        tf.saved_model.save(module, saved_dir, signatures=signatures)
        if tf.io.gfile.exists(final_dir):
            logging.warning("Replacing the existing export %s.", final_dir)
            tf.io.gfile.rmtree(final_dir)
        tf.io.gfile.rename(saved_dir, final_dir)
    finally:
        if tf.io.gfile.exists(temporary_dir):
            tf.io.gfile.rmtree(temporary_dir)
    logging.info("Exported the SavedModel of step %d to %s.", step, final_dir)
    return final_dir
