"""The TFRecord schema for segmentation examples (the one deeplab and the TF Model Garden write)."""

from collections.abc import Callable

import numpy as np
import tensorflow as tf

from trainer.common.errors import UserInputError

IMAGE_ENCODED = "image/encoded"
IMAGE_FORMAT = "image/format"
IMAGE_HEIGHT = "image/height"
IMAGE_WIDTH = "image/width"
IMAGE_FILENAME = "image/filename"
LABEL_ENCODED = "image/segmentation/class/encoded"
LABEL_FORMAT = "image/segmentation/class/format"
IMAGE_CHANNELS = "image/channels"
IMAGE_DTYPE = "image/dtype"

# Pixel types an image may have; PNG holds both at 1, 3 or 4 channels, other channel counts are stored raw.
IMAGE_DTYPES = ("uint8", "uint16")
_PNG_CHANNELS = (1, 3, 4)
RAW_FORMAT = "raw"

# Only the two encoded blobs are required: records written by other tools often omit the rest.
FEATURE_SPEC = {
    IMAGE_ENCODED: tf.io.FixedLenFeature((), tf.string),
    IMAGE_FORMAT: tf.io.FixedLenFeature((), tf.string, default_value="png"),
    IMAGE_HEIGHT: tf.io.FixedLenFeature((), tf.int64, default_value=0),
    IMAGE_WIDTH: tf.io.FixedLenFeature((), tf.int64, default_value=0),
    IMAGE_FILENAME: tf.io.FixedLenFeature((), tf.string, default_value="<unnamed>"),
    LABEL_ENCODED: tf.io.FixedLenFeature((), tf.string),
    LABEL_FORMAT: tf.io.FixedLenFeature((), tf.string, default_value="png"),
    IMAGE_CHANNELS: tf.io.FixedLenFeature((), tf.int64, default_value=3),
    IMAGE_DTYPE: tf.io.FixedLenFeature((), tf.string, default_value="uint8"),
}


def _bytes_feature(value: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int64_feature(value: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))


def sniff_image_format(encoded: bytes) -> str | None:
    """Returns "jpeg" or "png" from an encoded image's first bytes, None for any other format."""
    if encoded.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if encoded.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    return None


def _encoded(image: np.ndarray, encoded_image: bytes | None, filename: str) -> tuple[bytes, str]:
    """The image's stored bytes and format: the given JPEG/PNG file, else PNG, else raw pixels."""
    if encoded_image is None and image.shape[-1] not in _PNG_CHANNELS:
        return image.astype(image.dtype.newbyteorder("<")).tobytes(), RAW_FORMAT
    if encoded_image is None:
        return tf.io.encode_png(image).numpy(), "png"
    image_format = sniff_image_format(encoded_image)
    if image_format is None:
        raise UserInputError(
            f"encode_example({filename!r}): expected encoded_image in JPEG or PNG, received bytes starting "
            f"{encoded_image[:8]!r}; pass encoded_image=None to store the pixels PNG-encoded"
        )
    return encoded_image, image_format


def encode_example(image: np.ndarray, label: np.ndarray, filename: str, encoded_image: bytes | None = None) -> bytes:
    """Serializes one image and its label map as a `tf.train.Example`; the label is always PNG-encoded.

    Args:
      image: uint8 or uint16 array of shape [height, width, channels]; other than RGB uint8, the record
        carries `image/channels` and `image/dtype`, and is PNG (1, 3 or 4 channels) or raw pixels.
      label: uint8 array of shape [height, width] holding class ids (and the ignore label).
      filename: stored under `image/filename`; named in errors raised while reading the record.
      encoded_image: the image's JPEG or PNG file bytes, stored as they are (no re-encoding loss, and JPEG
        stays small); `image` must be their decoded pixels. None stores `image` PNG-encoded.

    Returns:
      The serialized example.

    Raises:
      UserInputError: if the dtypes or shapes are not as above, the spatial sizes differ, or `encoded_image` is
        neither JPEG nor PNG.
    """
    image = np.asarray(image)
    label = np.asarray(label)
    if image.dtype.name not in IMAGE_DTYPES or image.ndim != 3 or image.shape[-1] < 1:
        raise UserInputError(
            f"encode_example({filename!r}): expected image uint8 or uint16 [height, width, channels], "
            f"received {image.dtype} {list(image.shape)}"
        )
    if label.dtype != np.uint8 or label.ndim != 2:
        raise UserInputError(
            f"encode_example({filename!r}): expected label uint8 [height, width], "
            f"received {label.dtype} {list(label.shape)}"
        )
    if image.shape[:2] != label.shape:
        raise UserInputError(
            f"encode_example({filename!r}): expected image and label of the same height and width, "
            f"received image {list(image.shape[:2])} and label {list(label.shape)}"
        )
    encoded_image, image_format = _encoded(image, encoded_image, filename)
    height, width = label.shape
    feature = {
        IMAGE_ENCODED: _bytes_feature(encoded_image),
        IMAGE_FORMAT: _bytes_feature(image_format.encode("ascii")),
        IMAGE_HEIGHT: _int64_feature(height),
        IMAGE_WIDTH: _int64_feature(width),
        IMAGE_FILENAME: _bytes_feature(filename.encode("utf-8")),
        LABEL_ENCODED: _bytes_feature(tf.io.encode_png(label[..., np.newaxis]).numpy()),
        LABEL_FORMAT: _bytes_feature(b"png"),
    }
    if image.shape[-1] != 3 or image.dtype != np.uint8:
        # Only images other than RGB uint8 say so: records of RGB images stay as every other tool writes them.
        feature[IMAGE_CHANNELS] = _int64_feature(image.shape[-1])
        feature[IMAGE_DTYPE] = _bytes_feature(image.dtype.name.encode("ascii"))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def format_size(size: tf.Tensor) -> tf.Tensor:
    """Formats an int [height, width] tensor as the string tensor "HxW" for in-graph error messages."""
    return tf.strings.reduce_join(tf.strings.as_string(size), separator="x")


def check_record(condition: tf.Tensor, message_fn: Callable[[], list[tf.Tensor | str]]) -> tf.Tensor:
    """Returns a tensor that fails with the joined `message_fn()` when `condition` is False; graph-safe.

    The message (string formatting, masks) is only built on failure: `tf.debugging.Assert` with string data
    evaluates its message for every record, which is wasted work per element in tf.data.
    """

    def fail() -> tf.Tensor:
        with tf.control_dependencies([tf.debugging.Assert(False, [tf.strings.join(message_fn())])]):
            return tf.constant(False)

    return tf.cond(condition, lambda: tf.constant(True), fail)


def _decode_image(features: dict, channels: int, dtype: str) -> tf.Tensor:
    """The image of parsed `features`, [H, W, channels] of `dtype`: RGB uint8 as always, else PNG or raw."""
    if channels == 3 and dtype == "uint8":
        return tf.io.decode_image(features[IMAGE_ENCODED], channels=3, expand_animations=False)
    tf_dtype = tf.as_dtype(dtype)

    def raw() -> tf.Tensor:
        flat = tf.io.decode_raw(features[IMAGE_ENCODED], tf_dtype, little_endian=True)
        return tf.reshape(flat, tf.stack([features[IMAGE_HEIGHT], features[IMAGE_WIDTH], channels]))

    if channels not in _PNG_CHANNELS:
        return raw()
    return tf.cond(
        tf.equal(features[IMAGE_FORMAT], RAW_FORMAT),
        raw,
        lambda: tf.io.decode_png(features[IMAGE_ENCODED], channels=channels, dtype=tf_dtype),
    )


def parse_example(
    serialized: tf.Tensor, channels: int = 3, dtype: str = "uint8"
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Parses one serialized example into `(image [H, W, channels] of dtype, label uint8 [H, W], filename)`.

    Graph-safe. An RGB uint8 image may be JPEG or PNG (the format is sniffed from the bytes, not from
    `image/format`); other images are PNG (1, 3 or 4 channels) or raw little-endian pixels.

    Raises:
      tf.errors.InvalidArgumentError: when the image and label sizes differ, or the record's channels or
        pixel type are not `channels` and `dtype` (names `image/filename`).
    """
    features = tf.io.parse_single_example(serialized, FEATURE_SPEC)
    filename = features[IMAGE_FILENAME]
    kind = check_record(
        tf.logical_and(tf.equal(features[IMAGE_CHANNELS], channels), tf.equal(features[IMAGE_DTYPE], dtype)),
        lambda: [
            "Record ",
            filename,
            f": expected an image of {channels} channels of {dtype} (the dataset's image_channels and image_dtype), "
            "received ",
            tf.strings.as_string(features[IMAGE_CHANNELS]),
            " of ",
            features[IMAGE_DTYPE],
        ],
    )
    with tf.control_dependencies([kind]):
        image = _decode_image(features, channels, dtype)
    label = tf.io.decode_png(features[LABEL_ENCODED], channels=1)
    image_size = tf.shape(image)[:2]
    label_size = tf.shape(label)[:2]
    check = check_record(
        tf.reduce_all(tf.equal(image_size, label_size)),
        lambda: [
            "Record ",
            filename,
            ": expected the label map to have the image's height and width, received image ",
            format_size(image_size),
            " and label ",
            format_size(label_size),
        ],
    )
    with tf.control_dependencies([check]):
        label = tf.squeeze(label, axis=-1)
        image = tf.identity(image)
    image.set_shape([None, None, channels])
    label.set_shape([None, None])
    return image, label, filename
