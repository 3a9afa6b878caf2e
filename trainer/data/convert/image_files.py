"""Decoding source images of any channel count and of 8 or 16 bits: PNG, JPEG, BMP and (with tifffile) TIFF."""

import io

import numpy as np
import tensorflow as tf

from trainer.data import schema
from trainer.data.convert.bad_example import BadExample

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_PNG_BIT_DEPTH_OFFSET = 24


def is_tiff(data: bytes) -> bool:
    return data[:4] in _TIFF_MAGIC


def _read_tiff(data: bytes, channels: int) -> np.ndarray:
    try:
        import tifffile  # optional: pip install 'deeplab-trainer[tiff]'
    except ImportError:
        raise BadExample(
            "a TIFF image, but the tifffile package is not installed: pip install 'deeplab-trainer[tiff]' (or "
            "pip install tifffile)"
        ) from None
    image = np.asarray(tifffile.imread(io.BytesIO(data)))
    if image.ndim == 3 and image.shape[0] == channels and image.shape[-1] != channels:
        # Pages (or planar bands) first: [C, H, W], as multi-page TIFFs and many satellite products store them.
        image = np.moveaxis(image, 0, -1)
    return image


def decode(data: bytes, channels: int, dtype: str) -> np.ndarray:
    """Decodes an image file's bytes to [H, W, C] keeping its channels and bit depth.

    RGB uint8 datasets keep the converters' rule (every image made RGB: grey repeated, alpha dropped); other
    datasets take the file's own channels and pixel type, checked by the caller.

    Raises:
      BadExample: when the bytes do not decode.
    """
    if is_tiff(data):
        image = _read_tiff(data, channels)
    else:
        rgb = channels == 3 and dtype == "uint8"
        sixteen_bit = schema.sniff_image_format(data) == "png" and data[_PNG_BIT_DEPTH_OFFSET] == 16
        if rgb and sixteen_bit:
            raise BadExample(
                "expected an RGB image of uint8, received a 16-bit PNG (uint16); pass --image_dtype=uint16 and its "
                "--image_channels to keep its 16 bits"
            )
        try:
            if rgb:
                image = tf.io.decode_image(data, channels=3, expand_animations=False).numpy()
            elif sixteen_bit:
                image = tf.io.decode_png(data, channels=0, dtype=tf.uint16).numpy()
            else:
                image = tf.io.decode_image(data, channels=0, expand_animations=False).numpy()
        except tf.errors.InvalidArgumentError as error:
            raise BadExample(f"the image does not decode ({error.message.splitlines()[0]})") from None
    return image[..., np.newaxis] if image.ndim == 2 else image


def check(image: np.ndarray, channels: int, dtype: str) -> np.ndarray:
    """Returns `image` if it is [H, W, channels] of `dtype` (grey repeated for RGB uint8), else BadExample."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., np.newaxis]
    if channels == 3 and image.ndim == 3 and image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    if image.dtype.name != dtype or image.ndim != 3 or image.shape[-1] != channels:
        what = "an RGB image of uint8" if (channels, dtype) == (3, "uint8") else f"{channels} channel(s) of {dtype}"
        raise BadExample(
            f"expected {what} (--image_channels={channels} --image_dtype={dtype}), received {image.dtype} "
            f"{list(image.shape)}"
        )
    return image
