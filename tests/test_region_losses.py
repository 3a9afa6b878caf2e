"""Focal, Dice and Lovász-softmax against NumPy transcriptions of their papers; the weighted sum of terms."""

import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import mirrored_strategy, one_device_strategy
from trainer.common.errors import UserInputError
from trainer.core import losses, region_losses

IGNORE = 255


def _softmax(logits):
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def _example(seed=0, shape=(3, 6, 5, 4)):
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=shape) * 2).astype(np.float32)
    labels = rng.integers(0, shape[-1], size=shape[:3]).astype(np.int32)
    labels[rng.random(labels.shape) < 0.25] = IGNORE
    labels[1, labels[1] == 2] = 0  # a class absent from one image
    return labels, logits


def _numpy_focal(labels, logits, gamma, alpha=None):
    """Lin et al. 2017, eq. 5: FL(p_t) = -alpha_t (1 - p_t)^gamma log(p_t), per labelled pixel."""
    valid = labels != IGNORE
    safe = np.where(valid, labels, 0)
    p_t = np.take_along_axis(_softmax(logits.astype(np.float64)), safe[..., None], axis=-1)[..., 0]
    alpha_t = 1.0 if alpha is None else np.asarray(alpha)[safe]
    return np.where(valid, -alpha_t * (1 - p_t) ** gamma * np.log(p_t), 0.0)


def _numpy_dice(labels, logits, include_background=True, smooth=1.0):
    """Milletari et al. 2016, eq. 1 per image and class over the labelled pixels, 1 - D averaged over classes."""
    probabilities = _softmax(logits.astype(np.float64))
    total = 0.0
    for image_labels, image_probabilities in zip(labels, probabilities, strict=True):
        valid = image_labels != IGNORE
        classes = range(0 if include_background else 1, logits.shape[-1])
        per_class = []
        for c in classes:
            p = image_probabilities[..., c][valid]
            g = (image_labels[valid] == c).astype(np.float64)
            per_class.append(1 - (2 * (p * g).sum() + smooth) / ((p**2).sum() + (g**2).sum() + smooth))
        total += np.mean(per_class)
    return total


def _lovasz_grad(gt_sorted):
    """Berman et al. 2018, Alg. 1: the gradient of the Lovász extension of the Jaccard loss (their code)."""
    gts = gt_sorted.sum()
    intersection = gts - gt_sorted.cumsum()
    union = gts + (1 - gt_sorted).cumsum()
    jaccard = 1.0 - intersection / union
    jaccard[1:] = jaccard[1:] - jaccard[:-1]
    return jaccard


def _numpy_lovasz(labels, logits):
    """Lovász-softmax, per image, classes present (the reference `lovasz_softmax(per_image=True)`), summed."""
    probabilities = _softmax(logits.astype(np.float64))
    total = 0.0
    for image_labels, image_probabilities in zip(labels, probabilities, strict=True):
        valid = image_labels != IGNORE
        flat_labels, flat_probabilities = image_labels[valid], image_probabilities[valid]
        per_class = []
        for c in range(logits.shape[-1]):
            foreground = (flat_labels == c).astype(np.float64)
            if foreground.sum() == 0:
                continue
            errors = np.abs(foreground - flat_probabilities[:, c])
            order = np.argsort(-errors, kind="stable")
            per_class.append(np.dot(errors[order], _lovasz_grad(foreground[order])))
        total += np.mean(per_class) if per_class else 0.0
    return total


@pytest.mark.parametrize("gamma, alpha", [(2.0, None), (0.0, None), (1.5, (0.25, 0.75, 0.5, 1.0))])
def test_focal_matches_the_paper(gamma, alpha):
    labels, logits = _example()
    got = region_losses.focal_per_pixel(labels, logits, IGNORE, gamma, alpha).numpy()
    np.testing.assert_allclose(got, _numpy_focal(labels, logits, gamma, alpha), rtol=1e-5, atol=1e-7)


def test_focal_with_gamma_0_is_cross_entropy():
    labels, logits = _example(1)
    focal = region_losses.focal_per_pixel(labels, logits, IGNORE, 0.0, None)
    cross_entropy, _ = losses.SegmentationLoss().per_pixel(labels, logits, IGNORE)
    np.testing.assert_allclose(focal.numpy(), cross_entropy.numpy(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("include_background, smooth", [(True, 1.0), (False, 1.0), (True, 0.0)])
def test_dice_matches_the_paper(include_background, smooth):
    labels, logits = _example(2)
    got = region_losses.dice_sum(labels, logits, IGNORE, include_background, smooth).numpy()
    np.testing.assert_allclose(got, _numpy_dice(labels, logits, include_background, smooth), rtol=1e-5)


def test_lovasz_softmax_matches_the_reference():
    labels, logits = _example(3)
    labels[2] = IGNORE  # an image without a labelled pixel contributes 0
    got = region_losses.lovasz_softmax_sum(labels, logits, IGNORE).numpy()
    np.testing.assert_allclose(got, _numpy_lovasz(labels, logits), rtol=1e-5)


def test_weighted_sum_of_terms_is_each_term_over_its_global_normaliser():
    labels, logits = _example(4)
    loss = losses.SegmentationLoss(
        terms={"cross_entropy": 1.0, "focal": 0.5, "dice": 2.0, "lovasz": 0.25}, class_weights=(1.0, 2.0, 0.5, 1.0)
    )
    total = loss.weighted_loss(labels, logits, IGNORE, loss.term_normalizers(labels, IGNORE)).numpy()
    valid = labels != IGNORE
    pixel_weights = np.where(valid, np.asarray(loss.class_weights)[np.where(valid, labels, 0)], 0.0)
    cross_entropy, _ = losses.SegmentationLoss(class_weights=loss.class_weights).per_pixel(labels, logits, IGNORE)
    expected = (
        cross_entropy.numpy().sum() / valid.sum()
        + 0.5 * (_numpy_focal(labels, logits, 2.0) * pixel_weights).sum() / valid.sum()
        + 2.0 * _numpy_dice(labels, logits) / len(labels)
        + 0.25 * _numpy_lovasz(labels, logits) / len(labels)
    )
    np.testing.assert_allclose(total, expected, rtol=1e-5)


def _distributed_loss(strategy, loss, labels, logits):
    dataset = tf.data.Dataset.from_tensor_slices((labels, logits)).batch(len(labels))
    batch = next(iter(strategy.experimental_distribute_dataset(dataset)))

    @tf.function
    def step(labels, logits):
        context = tf.distribute.get_replica_context()
        normalizers = context.all_reduce(tf.distribute.ReduceOp.SUM, loss.term_normalizers(labels, IGNORE))
        return loss.weighted_loss(labels, logits, IGNORE, tf.maximum(normalizers, 1.0))

    per_replica = strategy.run(step, args=batch)
    return float(strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None))


@pytest.mark.parametrize("term", ["cross_entropy", "focal", "dice", "lovasz"])
def test_each_term_is_the_same_under_one_device_and_mirrored(term):
    labels, logits = _example(5, shape=(4, 6, 5, 3))
    loss = losses.SegmentationLoss(terms={term: 1.0}, focal_alpha=0.25)
    one_device = _distributed_loss(one_device_strategy(), loss, labels, logits)
    mirrored = _distributed_loss(mirrored_strategy(), loss, labels, logits)
    np.testing.assert_allclose(mirrored, one_device, rtol=1e-6)


def test_cross_entropy_alone_keeps_the_old_loss_exactly():
    labels, logits = _example(6)
    loss = losses.SegmentationLoss()
    old = loss.loss_sum(labels, logits, IGNORE) / loss.normalizer(labels, IGNORE)
    new = loss.weighted_loss(labels, logits, IGNORE, loss.term_normalizers(labels, IGNORE))
    assert new.numpy() == old.numpy()


@pytest.mark.parametrize(
    "kwargs, binding",
    [
        ({"terms": {"dice_loss": 1.0}}, "loss.terms"),
        ({"terms": {"dice": 0.0}}, "loss.terms"),
        ({"focal_gamma": -1.0}, "loss.focal_gamma"),
        ({"focal_alpha": 1.5}, "loss.focal_alpha"),
        ({"dice_smooth": -1}, "loss.dice_smooth"),
        ({"class_weights": "inverse"}, "loss.class_weights"),
    ],
)
def test_loss_terms_are_validated_with_the_binding_named(kwargs, binding):
    with pytest.raises(UserInputError, match=binding):
        losses.SegmentationLoss(**kwargs)
