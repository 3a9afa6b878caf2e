"""Focal, soft Dice and Lovász-softmax losses as batch sums, each skipping the ignore label.

Like the cross-entropy of `losses`, each returns a sum over the batch that the train loop divides by a
normaliser summed over every replica: the focal loss sums pixels (normalised by the contributing pixels), Dice
and Lovász-softmax sum one value per image (normalised by the number of images), so the loss of a global batch
does not depend on how it is split across replicas or micro-batches.
"""

import tensorflow as tf


def _valid_and_safe(labels: tf.Tensor, ignore_label: int) -> tuple[tf.Tensor, tf.Tensor]:
    labels = tf.cast(labels, tf.int32)
    valid = tf.not_equal(labels, ignore_label)
    return valid, tf.where(valid, labels, tf.zeros_like(labels))


def focal_per_pixel(
    labels: tf.Tensor, logits: tf.Tensor, ignore_label: int, gamma: float, alpha: tuple[float, ...] | None
) -> tf.Tensor:
    """-alpha_t (1 - p_t)^gamma log p_t per pixel [N, H, W] (Lin et al. 2017), 0 on ignored pixels.

    Args:
      alpha: one weight per class (alpha_t is the one of the pixel's label), or None for 1.
    """
    valid, safe = _valid_and_safe(labels, ignore_label)
    log_probabilities = tf.nn.log_softmax(tf.cast(logits, tf.float32), axis=-1)
    log_p_t = tf.gather(log_probabilities, safe, axis=-1, batch_dims=3)
    focal = -tf.pow(1.0 - tf.exp(log_p_t), gamma) * log_p_t
    if alpha is not None:
        focal *= tf.gather(tf.constant(alpha, tf.float32), safe)
    return tf.where(valid, focal, 0.0)


def dice_sum(
    labels: tf.Tensor, logits: tf.Tensor, ignore_label: int, include_background: bool, smooth: float
) -> tf.Tensor:
    """Sum over images of the soft Dice loss (Milletari et al. 2016), the mean over classes of 1 - Dice.

    Per image and class c, Dice = (2 sum p_c g_c + smooth) / (sum p_c^2 + sum g_c^2 + smooth) over the pixels
    not ignored, p the softmax probabilities, g the one-hot labels; `include_background` False leaves class 0
    out of the mean. `smooth` keeps a class absent from an image and its prediction at a loss near 0.
    """
    valid, safe = _valid_and_safe(labels, ignore_label)
    num_classes = logits.shape[-1]
    mask = tf.cast(valid, tf.float32)[..., tf.newaxis]
    probabilities = tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1) * mask
    one_hot = tf.one_hot(safe, num_classes, dtype=tf.float32) * mask
    intersection = tf.reduce_sum(probabilities * one_hot, axis=[1, 2])
    cardinality = tf.reduce_sum(tf.square(probabilities) + one_hot, axis=[1, 2])
    dice = (2.0 * intersection + smooth) / (cardinality + smooth)
    if not include_background:
        dice = dice[:, 1:]
    return tf.reduce_sum(tf.reduce_mean(1.0 - dice, axis=-1))


def _lovasz_gradient(sorted_foreground: tf.Tensor) -> tf.Tensor:
    """The gradient of the Lovász extension of the Jaccard loss at pixels sorted by decreasing error [..., P]."""
    total = tf.reduce_sum(sorted_foreground, axis=-1, keepdims=True)
    intersection = total - tf.cumsum(sorted_foreground, axis=-1)
    union = total + tf.cumsum(1.0 - sorted_foreground, axis=-1)
    jaccard = 1.0 - intersection / union
    return tf.concat([jaccard[..., :1], jaccard[..., 1:] - jaccard[..., :-1]], axis=-1)


def lovasz_softmax_sum(labels: tf.Tensor, logits: tf.Tensor, ignore_label: int) -> tf.Tensor:
    """Sum over images of the Lovász-softmax loss (Berman et al. 2018, per image, classes present).

    Per image, each class present among its labelled pixels contributes the Lovász extension of its Jaccard
    loss evaluated at the errors |g_c - p_c|; the image's loss is their mean (0 with no class present).
    Ignored pixels get error -1, so they sort after every real error and add nothing (their weight is
    multiplied by max(error, 0) = 0, and they come after every pixel whose error is above 0).
    """
    valid, safe = _valid_and_safe(labels, ignore_label)
    num_classes = logits.shape[-1]
    batch = tf.shape(labels)[0]
    probabilities = tf.reshape(tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1), [batch, -1, num_classes])
    valid = tf.reshape(valid, [batch, -1])
    foreground = tf.one_hot(tf.reshape(safe, [batch, -1]), num_classes, dtype=tf.float32)
    foreground *= tf.cast(valid, tf.float32)[..., tf.newaxis]
    # [batch, classes, pixels]: each class sorts its own errors.
    foreground = tf.transpose(foreground, [0, 2, 1])
    errors = tf.where(valid[:, tf.newaxis, :], tf.abs(foreground - tf.transpose(probabilities, [0, 2, 1])), -1.0)
    sorted_errors, order = tf.math.top_k(errors, k=tf.shape(errors)[-1], sorted=True)
    sorted_foreground = tf.gather(foreground, order, batch_dims=2)
    per_class = tf.reduce_sum(tf.maximum(sorted_errors, 0.0) * _lovasz_gradient(sorted_foreground), axis=-1)
    present = tf.cast(tf.reduce_sum(foreground, axis=-1) > 0, tf.float32)
    per_image = tf.reduce_sum(per_class * present, axis=-1) / tf.maximum(tf.reduce_sum(present, axis=-1), 1.0)
    return tf.reduce_sum(per_image)
