"""Pixels and colours: [-1, 1] floats ↔ uint8, the PASCAL VOC palette, colourised label maps and overlays."""

import numpy as np
import tensorflow as tf

# PASCAL VOC's "void" colour, for ignored pixels whatever the ignore label is.
IGNORE_COLOR = (224, 224, 192)


def to_unit_range(pixels: tf.Tensor) -> tf.Tensor:
    """uint8 (or float 0-255) pixels to float32 in [-1, 1], exactly as training normalises them."""
    return tf.cast(pixels, tf.float32) / 127.5 - 1.0


def to_pixel_range(images: tf.Tensor) -> tf.Tensor:
    """Float images in [-1, 1] to float32 0-255 pixels, unrounded: the exact inverse of `to_unit_range`."""
    return (tf.cast(images, tf.float32) + 1.0) * 127.5


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Float images in [-1, 1] to uint8 pixels (rounded, clipped); the inverse of `to_unit_range`."""
    return np.clip(np.rint((np.asarray(images, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def displayable(images: np.ndarray) -> np.ndarray:
    """float [..., C] model inputs as RGB uint8 to look at: 3 channels as they are, more than 3 their first three
    (RGB first in most multi-band data), fewer their first channel as grey; each image stretched to its own
    min-max range unless it is RGB in [-1, 1] already."""
    images = np.asarray(images, np.float32)
    channels = images.shape[-1]
    if channels == 3 and images.min(initial=0.0) >= -1.0 and images.max(initial=0.0) <= 1.0:
        return to_uint8(images)
    rgb = images[..., :3] if channels >= 3 else np.repeat(images[..., :1], 3, axis=-1)
    axes = tuple(range(1, rgb.ndim)) if rgb.ndim == 4 else None
    low, high = rgb.min(axis=axes, keepdims=True), rgb.max(axis=axes, keepdims=True)
    return to_uint8((rgb - low) / np.maximum(high - low, 1e-6) * 2.0 - 1.0)


def to_uint8_tensor(images: tf.Tensor) -> tf.Tensor:
    """`to_uint8` for tensors, inside a graph."""
    return tf.cast(tf.clip_by_value(tf.round((images + 1.0) * 127.5), 0.0, 255.0), tf.uint8)


def voc_palette(num_colors: int = 256) -> np.ndarray:
    """Returns PASCAL VOC's palette as uint8 [num_colors, 3]: the bits of each class id spread over R, G, B.

    Class 0 is black and every id below 256 gets a distinct colour, so it serves datasets of any size (it is
    the palette of VOC's and many other datasets' PNG label files).
    """
    ids = np.arange(num_colors)
    palette = np.zeros([num_colors, 3], np.int64)
    for bit in range(8):
        for channel in range(3):
            palette[:, channel] |= ((ids >> (3 * bit + channel)) & 1) << (7 - bit)
    return palette.astype(np.uint8)


def colorize(label_map: np.ndarray, palette: np.ndarray, ignore_label: int | None = None) -> np.ndarray:
    """Returns uint8 [..., 3] colours of an integer label map.

    Pixels equal to `ignore_label` are painted `IGNORE_COLOR`; ids beyond the palette take its last colour.
    """
    label_map = np.asarray(label_map).astype(np.int64)
    colors = palette[np.clip(label_map, 0, len(palette) - 1)]
    if ignore_label is not None:
        colors[label_map == ignore_label] = IGNORE_COLOR
    return colors.astype(np.uint8)


def overlay(image: np.ndarray, colors: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blends uint8 `colors` over uint8 `image` with weight `alpha`."""
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * colors.astype(np.float32)
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)
