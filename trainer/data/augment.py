"""Stateless-random augmentations of an (image, label) pair.

Each op takes an explicit `seed` (an int tensor of shape [2]) so that its result depends only on the seed:
the same eagerly and inside `tf.data`, whatever the parallelism. Images are float32 [H, W, 3]; labels keep
their integer dtype [H, W] and are never interpolated.
"""

import tensorflow as tf

from trainer.config import ConfigError


def random_scale(
    image: tf.Tensor, label: tf.Tensor, seed: tf.Tensor, min_scale: float, max_scale: float
) -> tuple[tf.Tensor, tf.Tensor]:
    """Resizes both by one factor drawn uniformly from [min_scale, max_scale]; bilinear image, nearest label.

    Raises:
      ValueError: if not 0 < min_scale <= max_scale.
    """
    if not 0 < min_scale <= max_scale:
        raise ConfigError(
            f"random_scale: expected 0 < min_scale <= max_scale, received min_scale={min_scale}, max_scale={max_scale}"
        )
    scale = tf.random.stateless_uniform([], seed, minval=min_scale, maxval=max_scale)
    size = tf.cast(tf.shape(image)[:2], tf.float32)
    new_size = tf.maximum(tf.cast(tf.round(size * scale), tf.int32), 1)
    image = tf.image.resize(image, new_size, method=tf.image.ResizeMethod.BILINEAR)
    # Nearest keeps class ids (and the ignore label) exact; interpolating them would invent classes.
    label = tf.image.resize(label[..., tf.newaxis], new_size, method=tf.image.ResizeMethod.NEAREST_NEIGHBOR)
    return image, tf.squeeze(label, axis=-1)


def pad_to_size(
    image: tf.Tensor,
    label: tf.Tensor,
    height: int,
    width: int,
    ignore_label: int,
    image_pad_value: float = 0,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Pads both at the bottom and right to at least height x width; the label with `ignore_label`."""
    size = tf.shape(image)[:2]
    pad_height = tf.maximum(height - size[0], 0)
    pad_width = tf.maximum(width - size[1], 0)
    image = tf.pad(
        image,
        [[0, pad_height], [0, pad_width], [0, 0]],
        constant_values=tf.cast(image_pad_value, image.dtype),
    )
    label = tf.pad(
        label,
        [[0, pad_height], [0, pad_width]],
        constant_values=tf.cast(ignore_label, label.dtype),
    )
    return image, label


def random_crop(
    image: tf.Tensor, label: tf.Tensor, seed: tf.Tensor, height: int, width: int
) -> tuple[tf.Tensor, tf.Tensor]:
    """Crops the same height x width window from both; they must be at least that large (see `pad_to_size`).

    Raises:
      tf.errors.InvalidArgumentError: if the image is smaller than the crop.
    """
    size = tf.shape(image)[:2]
    check = tf.debugging.Assert(
        tf.logical_and(size[0] >= height, size[1] >= width),
        [
            tf.strings.join(
                [
                    f"random_crop: expected an image of at least {height}x{width} (pad it first), received ",
                    tf.strings.reduce_join(tf.strings.as_string(size), separator="x"),
                ]
            )
        ],
    )
    offset_seeds = tf.random.experimental.stateless_split(seed, num=2)
    with tf.control_dependencies([check]):
        top = tf.random.stateless_uniform([], offset_seeds[0], minval=0, maxval=size[0] - height + 1, dtype=tf.int32)
    left = tf.random.stateless_uniform([], offset_seeds[1], minval=0, maxval=size[1] - width + 1, dtype=tf.int32)
    image = tf.ensure_shape(image[top : top + height, left : left + width, :], [height, width, image.shape[-1]])
    label = tf.ensure_shape(label[top : top + height, left : left + width], [height, width])
    return image, label


def random_horizontal_flip(image: tf.Tensor, label: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Mirrors both left-right with probability 1/2."""
    flip = tf.random.stateless_uniform([], seed) < 0.5
    image = tf.where(flip, tf.reverse(image, axis=[1]), image)
    label = tf.where(flip, tf.reverse(label, axis=[1]), label)
    return image, label
