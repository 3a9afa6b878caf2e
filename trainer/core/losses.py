"""Segmentation losses, normalised by the contributing pixels of the global batch.

Each loss is split into a sum over a (replica's, micro-batch's) batch and a normaliser that depends on the labels
only; the train loop divides every replica's sum by the normaliser summed over all replicas, so the gradient of a
global batch is the same however it is split across replicas or accumulation micro-batches.
"""

import dataclasses
from collections.abc import Mapping, Sequence

import gin
import tensorflow as tf

from trainer.common.errors import UserInputError
from trainer.core import region_losses

# The terms `loss.terms` may weight; pixel terms are normalised by contributing pixels, image terms by images.
PIXEL_TERMS = ("cross_entropy", "focal")
IMAGE_TERMS = ("dice", "lovasz")
# `loss.class_weights` computed from the training split's pixel counts (see `class_weights.py`).
CLASS_WEIGHT_RULES = ("inverse_frequency", "median_frequency")


def pixel_cross_entropy_sum(labels: tf.Tensor, logits: tf.Tensor, ignore_label: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Sums softmax cross-entropy over the pixels whose label is not `ignore_label`.

    Args:
      labels: int [batch, height, width] class ids, or `ignore_label`.
      logits: float [batch, height, width, num_classes].
      ignore_label: label value that contributes nothing.

    Returns:
      (sum of per-pixel losses, number of valid pixels), both float32 scalars. Dividing the sum by the
      valid-pixel count of the *global* batch makes the loss independent of how the batch is split.
    """
    labels = tf.cast(labels, tf.int32)
    valid = tf.not_equal(labels, ignore_label)
    # Ignored pixels get class 0 so the op sees a legal id; their loss is masked out below.
    safe_labels = tf.where(valid, labels, tf.zeros_like(labels))
    per_pixel = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=safe_labels, logits=tf.cast(logits, tf.float32))
    valid = tf.cast(valid, tf.float32)
    return tf.reduce_sum(per_pixel * valid), tf.reduce_sum(valid)


def is_decayed(variable: tf.Variable) -> bool:
    """True for convolution and dense kernels: weight decay skips biases and batch-norm parameters."""
    return "kernel" in variable.name


def l2_kernel_penalty(variables: Sequence[tf.Variable]) -> tf.Tensor:
    """Returns sum(w**2) over convolution and dense kernels (not biases nor batch-norm parameters)."""
    kernels = [v for v in variables if is_decayed(v)]
    if not kernels:
        return tf.constant(0.0)
    return tf.add_n([tf.reduce_sum(tf.square(tf.cast(v, tf.float32))) for v in kernels])


def _checked_terms(terms: Mapping[str, float] | None) -> tuple[tuple[str, float], ...]:
    if terms is None:
        return (("cross_entropy", 1.0),)
    pairs = tuple(terms.items()) if isinstance(terms, Mapping) else tuple(terms)
    known = PIXEL_TERMS + IMAGE_TERMS
    if not pairs or any(
        len(pair) != 2 or pair[0] not in known or isinstance(pair[1], bool) or not isinstance(pair[1], int | float)
        for pair in pairs
    ):
        raise UserInputError(
            f"gin binding loss.terms: expected a dict of term -> weight with terms among {known} (e.g. "
            f"{{'cross_entropy': 1.0, 'dice': 1.0}}), received {terms!r}."
        )
    if not all(weight > 0 for _, weight in pairs):
        raise UserInputError(f"gin binding loss.terms: expected positive weights, received {terms!r}.")
    return tuple((name, float(weight)) for name, weight in pairs)


def _checked_class_weights(class_weights) -> tuple[float, ...] | str | None:
    if class_weights is None or class_weights in CLASS_WEIGHT_RULES:
        return class_weights
    weights = tuple(class_weights) if not isinstance(class_weights, str) else ()
    if not weights or any(isinstance(w, bool) or not isinstance(w, int | float) or w < 0 or w != w for w in weights):
        raise UserInputError(
            "gin binding loss.class_weights: expected a non-empty tuple of non-negative numbers, one per "
            f"class, or one of {CLASS_WEIGHT_RULES}, received {class_weights!r}."
        )
    if not any(weights):
        raise UserInputError(
            f"gin binding loss.class_weights: expected at least one positive weight, received {weights!r}."
        )
    return tuple(float(w) for w in weights)


@gin.configurable("loss")
@dataclasses.dataclass(frozen=True)
class SegmentationLoss:
    """A weighted sum of segmentation losses: softmax cross-entropy (by default alone), focal, Dice, Lovász.

    Bound in gin as `loss.<field>`. Pixels labelled `ignore_label` contribute nothing to any term; pixels of a
    class whose weight is 0 nothing to the pixel terms (cross-entropy, focal), neither to the sum nor to the
    normaliser.

    Attributes:
      terms: term -> weight, e.g. `{'cross_entropy': 1.0, 'dice': 1.0}`; None is cross-entropy alone. Terms:
        `cross_entropy`; `focal` (Lin et al.); `dice`, soft Dice per image and class (Milletari et al.);
        `lovasz`, Lovász-softmax per image over the classes present (Berman et al.). The pixel terms are
        normalised by the contributing pixels of the global batch, the image terms by its images.
      class_weights: one non-negative weight per class multiplying that class's pixel losses (cross-entropy
        and focal), None (all 1), or `'inverse_frequency'` / `'median_frequency'`: computed from the training
        split's pixel counts when the run starts, and logged.
      focal_gamma: the focusing exponent gamma >= 0 of the focal term (2 in the paper).
      focal_alpha: the focal term's balance: a number a in (0, 1) weights the classes >= 1 by a and class 0
        (background) by 1 - a (the paper's binary alpha; 0.25 there), a tuple gives one weight per class;
        None weights every class 1.
      dice_include_background: whether class 0 counts in the Dice term's mean over classes.
      dice_smooth: added to the Dice numerator and denominator (>= 0); it keeps a class absent from an image
        and from its prediction near a loss of 0.
      label_smoothing: epsilon in [0, 1): the target is (1 - epsilon) on the label plus epsilon spread evenly
        over all classes.
      top_k_percent_pixels: fraction in (0, 1] of each image's pixels to keep, the ones with the largest loss
        (DeepLab's `top_k_percent_pixels`; 1.0 keeps all). Selected per image, so it does not depend on how the
        batch is split; the normaliser is the number of kept pixels.
    """

    class_weights: tuple[float, ...] | str | None = None
    label_smoothing: float = 0.0
    top_k_percent_pixels: float = 1.0
    terms: Mapping[str, float] | None = None
    focal_gamma: float = 2.0
    focal_alpha: float | tuple[float, ...] | None = None
    dice_include_background: bool = True
    dice_smooth: float = 1.0

    def __post_init__(self):
        object.__setattr__(self, "class_weights", _checked_class_weights(self.class_weights))
        object.__setattr__(self, "terms", _checked_terms(self.terms))
        if not isinstance(self.focal_gamma, int | float) or self.focal_gamma < 0:
            raise UserInputError(
                f"gin binding loss.focal_gamma: expected a number >= 0, received {self.focal_gamma!r}."
            )
        alpha = self.focal_alpha
        if alpha is not None and not (
            (isinstance(alpha, int | float) and 0 < alpha < 1)
            or (isinstance(alpha, tuple | list) and alpha and all(isinstance(a, int | float) and a >= 0 for a in alpha))
        ):
            raise UserInputError(
                "gin binding loss.focal_alpha: expected a number in (0, 1), a tuple of non-negative weights (one "
                f"per class) or None, received {alpha!r}."
            )
        if not isinstance(self.dice_smooth, int | float) or self.dice_smooth < 0:
            raise UserInputError(
                f"gin binding loss.dice_smooth: expected a number >= 0, received {self.dice_smooth!r}."
            )
        if not 0.0 <= self.label_smoothing < 1.0:
            raise UserInputError(
                f"gin binding loss.label_smoothing: expected 0 <= epsilon < 1, received {self.label_smoothing!r}."
            )
        if not 0.0 < self.top_k_percent_pixels <= 1.0:
            raise UserInputError(
                "gin binding loss.top_k_percent_pixels: expected a fraction in (0, 1] of the pixels to keep "
                f"(e.g. 0.2 keeps the hardest 20%), received {self.top_k_percent_pixels!r}."
            )

    def check_num_classes(self, num_classes: int) -> None:
        """Raises UserInputError if `class_weights` or `focal_alpha` do not have one weight per class."""
        if isinstance(self.class_weights, str):
            raise UserInputError(
                f"gin binding loss.class_weights = {self.class_weights!r}: the weights are computed from the "
                "dataset's pixel counts when the run starts (class_weights.resolve), not yet done here."
            )
        for binding, weights in (("class_weights", self.class_weights), ("focal_alpha", self.focal_alpha)):
            if isinstance(weights, tuple | list) and len(weights) != num_classes:
                raise UserInputError(
                    f"gin binding loss.{binding}: expected {num_classes} weights (one per class of the dataset), "
                    f"received {len(weights)}: {weights!r}."
                )

    def _focal_alpha(self, num_classes: int) -> tuple[float, ...] | None:
        if self.focal_alpha is None or isinstance(self.focal_alpha, tuple | list):
            return self.focal_alpha
        return (1.0 - self.focal_alpha,) + (float(self.focal_alpha),) * (num_classes - 1)

    def _pixel_weights(self, labels: tf.Tensor, ignore_label: int) -> tuple[tf.Tensor, tf.Tensor]:
        """Returns (class ids with ignored pixels set to 0, float32 weight per pixel: 0 where ignored)."""
        labels = tf.cast(labels, tf.int32)
        valid = tf.not_equal(labels, ignore_label)
        safe_labels = tf.where(valid, labels, tf.zeros_like(labels))
        if self.class_weights is None:
            weights = tf.cast(valid, tf.float32)
        else:
            weights = tf.where(valid, tf.gather(tf.constant(self.class_weights, tf.float32), safe_labels), 0.0)
        return safe_labels, weights

    def _kept_per_image(self, contributing: tf.Tensor) -> tf.Tensor:
        """Number of pixels kept per image by hard-pixel mining: min(k, contributing pixels), k = round(p * H * W)."""
        pixels_per_image = tf.shape(contributing)[1] * tf.shape(contributing)[2]
        k = self._top_k(pixels_per_image)
        return tf.minimum(tf.cast(k, tf.float32), tf.reduce_sum(contributing, axis=[1, 2]))

    def _top_k(self, pixels_per_image: tf.Tensor) -> tf.Tensor:
        k = tf.cast(tf.round(self.top_k_percent_pixels * tf.cast(pixels_per_image, tf.float32)), tf.int32)
        return tf.maximum(k, 1)

    def normalizer(self, labels: tf.Tensor, ignore_label: int) -> tf.Tensor:
        """Number of pixels of `labels` [N, H, W] that contribute to `loss_sum` (a float32 scalar; labels only).

        Computable before the forward pass, so the global normaliser can be all-reduced once per step, even when
        the step accumulates several micro-batches.
        """
        _, weights = self._pixel_weights(labels, ignore_label)
        contributing = tf.cast(weights > 0.0, tf.float32)
        if self.top_k_percent_pixels >= 1.0:
            return tf.reduce_sum(contributing)
        return tf.reduce_sum(self._kept_per_image(contributing))

    def per_pixel(self, labels: tf.Tensor, logits: tf.Tensor, ignore_label: int) -> tuple[tf.Tensor, tf.Tensor]:
        """Returns (weighted loss [N, H, W], float32 mask [N, H, W] of the pixels that may contribute)."""
        logits = tf.cast(logits, tf.float32)
        if self.class_weights is not None and logits.shape[-1] is not None:
            self.check_num_classes(int(logits.shape[-1]))
        safe_labels, weights = self._pixel_weights(labels, ignore_label)
        losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=safe_labels, logits=logits)
        if self.label_smoothing > 0.0:
            # Cross-entropy against the uniform distribution, -mean_c(log p_c) = logsumexp(z) - mean(z): no
            # one-hot or log-softmax tensor of the logits' size is materialised.
            uniform = tf.reduce_logsumexp(logits, axis=-1) - tf.reduce_mean(logits, axis=-1)
            losses = (1.0 - self.label_smoothing) * losses + self.label_smoothing * uniform
        return losses * weights, tf.cast(weights > 0.0, tf.float32)

    def loss_sum(self, labels: tf.Tensor, logits: tf.Tensor, ignore_label: int) -> tf.Tensor:
        """Sum of the contributing pixel losses of a batch (float32 scalar); divide by the global `normalizer`."""
        losses, contributing = self.per_pixel(labels, logits, ignore_label)
        if self.top_k_percent_pixels >= 1.0:
            return tf.reduce_sum(losses)
        batch = tf.shape(losses)[0]
        flat_losses = tf.reshape(losses, [batch, -1])
        flat_contributing = tf.reshape(contributing, [batch, -1])
        # Non-contributing pixels rank below every real loss (losses are >= 0), so top-k takes them last and
        # clipping at 0 removes the ones it had to take: exactly min(k, contributing) pixels count per image.
        ranked = tf.where(flat_contributing > 0.0, flat_losses, -1.0)
        k = tf.minimum(self._top_k(tf.shape(flat_losses)[1]), tf.shape(flat_losses)[1])
        hardest = tf.math.top_k(ranked, k=k, sorted=False).values
        return tf.reduce_sum(tf.maximum(hardest, 0.0))

    @property
    def is_cross_entropy_only(self) -> bool:
        return self.terms == (("cross_entropy", 1.0),)

    def term_normalizers(self, labels: tf.Tensor, ignore_label: int) -> tf.Tensor:
        """float32 [number of terms]: each term's normaliser for `labels` (labels only; sum it over replicas)."""
        values = []
        for name, _ in self.terms:
            if name == "cross_entropy":
                values.append(self.normalizer(labels, ignore_label))
            elif name == "focal":
                values.append(tf.reduce_sum(tf.cast(self._pixel_weights(labels, ignore_label)[1] > 0.0, tf.float32)))
            else:
                values.append(tf.cast(tf.shape(labels)[0], tf.float32))
        return tf.stack(values)

    def term_sums(self, labels: tf.Tensor, logits: tf.Tensor, ignore_label: int) -> tf.Tensor:
        """float32 [number of terms]: each term's sum over the batch (divide by the global `term_normalizers`)."""
        values = []
        for name, _ in self.terms:
            if name == "cross_entropy":
                values.append(self.loss_sum(labels, logits, ignore_label))
            elif name == "focal":
                num_classes = int(logits.shape[-1])
                self.check_num_classes(num_classes)
                focal = region_losses.focal_per_pixel(
                    labels, logits, ignore_label, float(self.focal_gamma), self._focal_alpha(num_classes)
                )
                values.append(tf.reduce_sum(focal * self._pixel_weights(labels, ignore_label)[1]))
            elif name == "dice":
                values.append(
                    region_losses.dice_sum(
                        labels, logits, ignore_label, self.dice_include_background, float(self.dice_smooth)
                    )
                )
            else:
                values.append(region_losses.lovasz_softmax_sum(labels, logits, ignore_label))
        return tf.stack(values)

    def weighted_loss(self, labels: tf.Tensor, logits: tf.Tensor, ignore_label: int, normalizers: tf.Tensor):
        """The loss: sum over terms of weight * term sum / term normaliser (`normalizers` from every replica)."""
        weights = tf.constant([weight for _, weight in self.terms], tf.float32)
        return tf.reduce_sum(weights * self.term_sums(labels, logits, ignore_label) / normalizers)
