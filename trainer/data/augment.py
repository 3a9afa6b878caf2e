"""Stateless-random augmentations of an (image, label) pair.

Each op takes an explicit `seed` (an int tensor of shape [2]) so that its result depends only on the seed:
the same eagerly and inside `tf.data`, whatever the parallelism. Images are float32 [H, W, 3]; labels keep
their integer dtype [H, W] and are never interpolated.
"""

import math

import tensorflow as tf

from trainer.common import validate
from trainer.common.errors import expected


def check_scales(where: str, min_scale: float, max_scale: float, scale_step: float) -> None:
    """Checks a scale range for `random_scale`, naming the settings `<where>.min_scale` etc. in errors.

    Raises:
      UserInputError: if not 0 < min_scale <= max_scale, or scale_step < 0.
    """
    validate.positive_number(f"{where}.min_scale", min_scale)
    validate.positive_number(f"{where}.max_scale", max_scale)
    if min_scale > max_scale:
        raise expected(f"{where}.min_scale/max_scale", "min_scale <= max_scale", (min_scale, max_scale))
    validate.non_negative_number(f"{where}.scale_step", scale_step)


def random_scale(
    image: tf.Tensor,
    label: tf.Tensor,
    seed: tf.Tensor,
    min_scale: float,
    max_scale: float,
    scale_step: float = 0.0,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Resizes both by one random factor in [min_scale, max_scale]; bilinear image, nearest label.

    Args:
      scale_step: 0 draws the factor uniformly; a positive step draws it among min_scale, min_scale + step,
        ... up to max_scale (DeepLab's `scale_factor_step_size`, e.g. 0.25 over [0.5, 2.0]).

    Raises:
      UserInputError: if not 0 < min_scale <= max_scale, or scale_step < 0.
    """
    check_scales("random_scale", min_scale, max_scale, scale_step)
    if scale_step > 0:
        # The small tolerance keeps max_scale among the choices when (max - min) / step is a whole number.
        num_scales = int(math.floor((max_scale - min_scale) / scale_step + 1e-6)) + 1
        index = tf.random.stateless_uniform([], seed, minval=0, maxval=num_scales, dtype=tf.int32)
        scale = min_scale + tf.cast(index, tf.float32) * scale_step
    else:
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
    image_pad_value: float | tuple[float, float, float] = 0,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Pads both at the bottom and right to at least height x width; the label with `ignore_label`.

    Args:
      image_pad_value: the padding of the image, one value or one per channel (e.g. the dataset's mean
        pixel in the model's input space).
    """
    size = tf.shape(image)[:2]
    paddings = [[0, tf.maximum(height - size[0], 0)], [0, tf.maximum(width - size[1], 0)]]
    if isinstance(image_pad_value, (tuple, list)):
        # tf.pad takes one scalar: pad with zeros and overwrite the padding, so the image keeps its exact values.
        inside = tf.pad(tf.ones_like(image[..., :1], dtype=tf.bool), paddings + [[0, 0]], constant_values=False)
        padded = tf.pad(image, paddings + [[0, 0]])
        image = tf.where(inside, padded, tf.constant(image_pad_value, image.dtype))
    else:
        image = tf.pad(image, paddings + [[0, 0]], constant_values=tf.cast(image_pad_value, image.dtype))
    label = tf.pad(label, paddings, constant_values=tf.cast(ignore_label, label.dtype))
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


def photometric_jitter(
    image: tf.Tensor,
    seed: tf.Tensor,
    brightness_delta: float,
    contrast_range: tuple[float, float],
    saturation_range: tuple[float, float],
    hue_delta: float,
) -> tf.Tensor:
    """Randomly shifts brightness and hue and scales contrast and saturation of an image in [-1, 1].

    The image only: colours change, positions do not, so the label needs nothing. Each factor is drawn
    uniformly from its range (which includes "unchanged"); the result is clipped back to [-1, 1].

    Args:
      brightness_delta: the largest brightness shift, as a fraction of the full range (32/255 in mmseg).
      contrast_range: (lower, upper) contrast factors, lower < upper; (1, 1) leaves contrast alone.
      saturation_range: (lower, upper) saturation factors, lower < upper; (1, 1) leaves saturation alone.
      hue_delta: the largest hue rotation as a fraction of the colour wheel, in [0, 0.5].
    """
    brightness_seed, contrast_seed, saturation_seed, hue_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, num=4)
    )
    # tf.image's colour ops work on [0, 1] images.
    image = (image + 1.0) / 2.0
    if brightness_delta > 0:
        image = tf.image.stateless_random_brightness(image, brightness_delta, brightness_seed)
    if tuple(contrast_range) != (1, 1):
        image = tf.image.stateless_random_contrast(image, contrast_range[0], contrast_range[1], contrast_seed)
    if tuple(saturation_range) != (1, 1):
        image = tf.image.stateless_random_saturation(
            tf.clip_by_value(image, 0.0, 1.0), saturation_range[0], saturation_range[1], saturation_seed
        )
    if hue_delta > 0:
        image = tf.image.stateless_random_hue(tf.clip_by_value(image, 0.0, 1.0), hue_delta, hue_seed)
    return tf.clip_by_value(image, 0.0, 1.0) * 2.0 - 1.0
