"""The in-graph pre- and post-processing shared by every exported model, so clients send raw images.

uint8 pixels are normalised exactly as the training pipeline does (x / 127.5 - 1), padded at the bottom and
right to a multiple of the model's output stride with 0 (mid-grey, the training pipeline's padding value), and
the logits are cropped back to the image, so a served prediction is the trained model's prediction.
"""

import tensorflow as tf
import tf_keras as keras

from trainer.common.errors import UserInputError
from trainer.common.images import to_unit_range
from trainer.models.layers import spatial_size

IMAGES_INPUT = "images"
CLASS_MAP = "class_map"
PROBABILITIES = "probabilities"
# class_map's value outside an image, where a batch of different sizes was padded to the largest.
PADDING_CLASS = -1


def size_multiple(model: keras.Model) -> int:
    """Returns the multiple that exported models pad image sizes to: the backbone's output stride.

    Raises:
      UserInputError: if the model has no `backbone.output_stride` to read it from.
    """
    stride = getattr(getattr(model, "backbone", None), "output_stride", None)
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise UserInputError(
            f"export: expected the model's backbone to have a positive int `output_stride` (the multiple that "
            f"exported models pad images to), received {stride!r} from {type(model).__name__}; set the gin binding "
            "export.size_multiple."
        )
    return stride


def _round_up(value: "int | tf.Tensor", multiple: int) -> "int | tf.Tensor":
    # Works on Python ints (static shapes stay static, which TFLite wants) and on scalar tensors alike.
    return (value + multiple - 1) // multiple * multiple


def segment_logits(model: keras.Model, images: tf.Tensor, multiple: int) -> tf.Tensor:
    """Returns float32 logits [N, H, W, C] of uint8 `images` [N, H, W, 3]: normalise, pad, infer, crop back."""
    height, width = spatial_size(images)
    pad_height = _round_up(height, multiple) - height
    pad_width = _round_up(width, multiple) - width
    padded = tf.pad(to_unit_range(images), [[0, 0], [0, pad_height], [0, pad_width], [0, 0]])
    logits = model(padded, training=False)
    return tf.cast(logits, tf.float32)[:, :height, :width, :]


def predictions(logits: tf.Tensor) -> dict[str, tf.Tensor]:
    """The exported outputs: `class_map` int32 [N, H, W] and `probabilities` float32 [N, H, W, C]."""
    # The class map comes from the logits, not the softmax: rounding can make two close probabilities equal.
    return {
        CLASS_MAP: tf.argmax(logits, axis=-1, output_type=tf.int32),
        PROBABILITIES: tf.nn.softmax(logits, axis=-1),
    }


def fixed_size_module(
    model: keras.Model, input_size: tuple[int, int], multiple: int, batch_size: int | None
) -> tf.Module:
    """The model behind a fixed-size uint8 input `images` [batch_size, H, W, 3] (None: any batch), with the
    SavedModel's pre- and post-processing, as `module.serve`.

    Converters (TFLite, ONNX) want the spatial size static: padding to `multiple` then stays a constant.
    """
    module = tf.Module(name="fixed_size_segmenter")
    # As in the SavedModel, only the variables are tracked: converters save the module, Keras tracing is slow.
    module.model_variables = list(model.variables)

    def segment(images: tf.Tensor) -> dict[str, tf.Tensor]:
        return predictions(segment_logits(model, images, multiple))

    height, width = input_size
    signature = [tf.TensorSpec([batch_size, height, width, 3], tf.uint8, IMAGES_INPUT)]
    module.serve = tf.function(segment, input_signature=signature)
    return module


def decode_images(image_bytes: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Decodes a batch of JPEG/PNG (or GIF/BMP) strings, padding them to the largest.

    Args:
      image_bytes: string [N], one encoded image each.

    Returns:
      (uint8 [N, H_max, W_max, 3] zero-padded at the bottom and right, int32 [N, 2] each image's height and width).
    """
    num_images = tf.shape(image_bytes)[0]
    decoded = tf.TensorArray(tf.uint8, size=num_images, infer_shape=False, element_shape=[None, None, 3])
    sizes = tf.TensorArray(tf.int32, size=num_images, element_shape=[2])
    for index in tf.range(num_images):
        image = tf.io.decode_image(image_bytes[index], channels=3, expand_animations=False)
        decoded = decoded.write(index, image)
        sizes = sizes.write(index, tf.shape(image)[:2])
    sizes = sizes.stack()
    max_size = tf.reduce_max(tf.concat([sizes, tf.zeros([1, 2], tf.int32)], axis=0), axis=0)
    padded = tf.TensorArray(tf.uint8, size=num_images, element_shape=[None, None, 3])
    for index in tf.range(num_images):
        image = decoded.read(index)
        padding = max_size - tf.shape(image)[:2]
        padded = padded.write(index, tf.pad(image, [[0, padding[0]], [0, padding[1]], [0, 0]]))
    images = padded.stack()
    images.set_shape([None, None, None, 3])
    return images, sizes


def segment_padded_batch(model: keras.Model, images: tf.Tensor, sizes: tf.Tensor, multiple: int) -> dict:
    """Predictions for a batch whose images (of `sizes`) were padded to one size by `decode_images`.

    Each image is inferred at its own size (padding it would change the model's view: ASPP pools over the whole
    image); outside an image `class_map` is `PADDING_CLASS` and `probabilities` 0.
    """
    batch_height, batch_width = tf.shape(images)[1], tf.shape(images)[2]
    one_size = tf.reduce_all(tf.equal(sizes, [batch_height, batch_width]))

    def whole_batch() -> tf.Tensor:
        return segment_logits(model, images, multiple)

    def one_by_one() -> tf.Tensor:
        def image_logits(index: tf.Tensor) -> tf.Tensor:
            height, width = sizes[index][0], sizes[index][1]
            logits = segment_logits(model, images[index : index + 1, :height, :width, :], multiple)[0]
            return tf.pad(logits, [[0, batch_height - height], [0, batch_width - width], [0, 0]])

        return tf.map_fn(image_logits, tf.range(tf.shape(images)[0]), fn_output_signature=tf.float32)

    logits = tf.cond(one_size, whole_batch, one_by_one)
    rows = tf.range(batch_height)[tf.newaxis, :, tf.newaxis] < sizes[:, 0, tf.newaxis, tf.newaxis]
    columns = tf.range(batch_width)[tf.newaxis, tf.newaxis, :] < sizes[:, 1, tf.newaxis, tf.newaxis]
    inside = tf.logical_and(rows, columns)
    outputs = predictions(logits)
    return {
        CLASS_MAP: tf.where(inside, outputs[CLASS_MAP], PADDING_CLASS),
        PROBABILITIES: outputs[PROBABILITIES] * tf.cast(inside, tf.float32)[..., tf.newaxis],
    }
