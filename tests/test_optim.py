"""Learning-rate schedules, the update rules, weight decay, clipping and the backbone learning-rate multiplier."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from trainer.common.errors import UserInputError
from trainer.core import optim


def test_schedule_warms_up_linearly_then_decays_polynomially():
    schedule = optim.WarmupPolynomialDecay(0.1, decay_steps=100, warmup_steps=10, power=0.9)
    np.testing.assert_allclose(float(schedule(0)), 0.0)
    np.testing.assert_allclose(float(schedule(5)), 0.05, rtol=1e-6)
    np.testing.assert_allclose(float(schedule(50)), 0.1 * 0.5**0.9, rtol=1e-6)
    np.testing.assert_allclose(float(schedule(100)), 0.0, atol=1e-9)
    np.testing.assert_allclose(float(schedule(150)), 0.0, atol=1e-9)


def test_warmup_longer_than_training_is_a_clear_error():
    with pytest.raises(UserInputError, match="optimizer.warmup_steps"):
        optim.build_optimizer(optim.OptimizerConfig(warmup_steps=10), total_steps=10)


def test_optimizer_is_sgd_with_momentum():
    optimizer = optim.build_optimizer(optim.OptimizerConfig(learning_rate=0.2, momentum=0.8), total_steps=10)
    assert type(optimizer).__name__ == "SGD"
    assert optimizer.momentum == 0.8


def test_adam_is_available_and_unknown_algorithms_are_named():
    assert type(optim.build_optimizer(optim.OptimizerConfig(algorithm="adam"), total_steps=10)).__name__ == "Adam"
    with pytest.raises(
        UserInputError, match=r"optimizer.algorithm: expected one of \{sgd, adam, adamw\}, received 'lamb'"
    ):
        optim.build_optimizer(optim.OptimizerConfig(algorithm="lamb"), total_steps=10)


def test_cosine_schedule_warms_up_then_follows_half_a_cosine():
    schedule = optim.WarmupCosineDecay(0.1, decay_steps=100, warmup_steps=10, end_learning_rate=0.01)
    np.testing.assert_allclose(float(schedule(5)), 0.05, rtol=1e-6)
    for step in (10, 40, 75, 100):
        expected = 0.01 + 0.09 * 0.5 * (1 + np.cos(np.pi * step / 100))
        np.testing.assert_allclose(float(schedule(step)), expected, rtol=1e-6)
    np.testing.assert_allclose(float(schedule(130)), 0.01, rtol=1e-6)


def test_step_schedule_drops_by_the_factor_at_each_boundary():
    schedule = optim.WarmupStepDecay(0.1, decay_steps=100, boundaries=(30, 60), factor=0.1, warmup_steps=5)
    values = [float(schedule(step)) for step in (0, 2, 5, 29, 30, 59, 60, 99)]
    np.testing.assert_allclose(values, [0.0, 0.04, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6)
    with pytest.raises(UserInputError, match="optimizer.step_boundaries: expected a non-empty, strictly ascending"):
        optim.build_optimizer(optim.OptimizerConfig(schedule="step", step_boundaries=(60, 30)), total_steps=100)
    with pytest.raises(UserInputError, match=r"optimizer.schedule: expected one of \{poly, cosine, step\}"):
        optim.build_optimizer(optim.OptimizerConfig(schedule="exponential"), total_steps=100)


def _dense_model():
    """A 'backbone' Dense and a head Dense: kernels (decayed) and biases (not)."""

    class TwoPart(keras.Model):
        def __init__(self):
            super().__init__()
            self.backbone = keras.layers.Dense(3, kernel_initializer="ones", bias_initializer="ones")
            self.head = keras.layers.Dense(2, kernel_initializer="ones", bias_initializer="ones")

        def call(self, x):
            return self.head(self.backbone(x))

    model = TwoPart()
    model(tf.zeros([1, 4]))
    return model


def _apply(optimizer, model, gradient_value=1.0):
    gradients = [tf.fill(v.shape, gradient_value) for v in model.trainable_variables]
    optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))


def test_adamw_decays_kernels_only_and_decoupled_from_the_gradient():
    model = _dense_model()
    optimizer = optim.build_optimizer(
        optim.OptimizerConfig(
            algorithm="adamw", learning_rate=0.1, weight_decay=0.5, schedule="step", step_boundaries=(100,)
        ),
        total_steps=10,
        model=model,
    )
    assert type(optimizer).__name__ == "AdamW"
    _apply(optimizer, model, gradient_value=0.0)
    # A zero gradient leaves Adam's step at 0: what moves is the decay, lr * wd * w, on kernels only.
    np.testing.assert_allclose(model.backbone.kernel.numpy(), 1.0 - 0.1 * 0.5, rtol=1e-6)
    np.testing.assert_allclose(model.head.kernel.numpy(), 1.0 - 0.1 * 0.5, rtol=1e-6)
    np.testing.assert_allclose(model.backbone.bias.numpy(), 1.0)
    np.testing.assert_allclose(model.head.bias.numpy(), 1.0)
    with pytest.raises(
        UserInputError, match="optimizer.weight_decay: decoupled weight decay applies to algorithm 'adamw'"
    ):
        optim.build_optimizer(optim.OptimizerConfig(algorithm="sgd", weight_decay=0.1), total_steps=10)


@pytest.mark.parametrize("algorithm", ["sgd", "adam", "adamw"])
def test_backbone_multiplier_scales_the_backbone_update_for_every_algorithm(algorithm):
    updates = {}
    for multiplier in (1.0, 0.1):
        model = _dense_model()
        optimizer = optim.build_optimizer(
            optim.OptimizerConfig(algorithm=algorithm, learning_rate=0.1, backbone_learning_rate_multiplier=multiplier),
            total_steps=10,
            model=model,
        )
        before = [v.numpy() for v in model.trainable_variables]
        # AdamW's decay makes later steps depend on the weights, which differ between the two runs: one step
        # (from the same weights) isolates the learning rate's effect.
        for _ in range(1 if algorithm == "adamw" else 3):
            _apply(optimizer, model)
        updates[multiplier] = [v.numpy() - b for v, b in zip(model.trainable_variables, before, strict=True)]
        # Outside an update the learning rate is the schedule's (the one its last step used).
        last_step = int(optimizer.iterations.numpy()) - 1
        np.testing.assert_allclose(float(optimizer.learning_rate), float(optimizer._learning_rate(last_step)))
    backbone = len(model.backbone.trainable_variables)
    assert backbone == 2
    for full, scaled in zip(updates[1.0][:backbone], updates[0.1][:backbone], strict=True):
        assert np.abs(full).min() > 0
        np.testing.assert_allclose(scaled, 0.1 * full, rtol=1e-5)
    for full, scaled in zip(updates[1.0][backbone:], updates[0.1][backbone:], strict=True):
        np.testing.assert_allclose(scaled, full, rtol=1e-6)


def test_backbone_multiplier_needs_a_model_with_a_backbone():
    with pytest.raises(UserInputError, match="backbone_learning_rate_multiplier: expected a model with a `backbone`"):
        optim.build_optimizer(
            optim.OptimizerConfig(backbone_learning_rate_multiplier=0.1),
            total_steps=10,
            model=keras.Sequential([keras.layers.Dense(2)]),
        )


def test_global_clipnorm_clips_the_update_to_the_global_norm():
    model = _dense_model()
    optimizer = optim.build_optimizer(
        optim.OptimizerConfig(
            learning_rate=1.0, momentum=0.0, schedule="step", step_boundaries=(100,), global_clipnorm=2.0
        ),
        total_steps=10,
        model=model,
    )
    before = [v.numpy() for v in model.trainable_variables]
    _apply(optimizer, model, gradient_value=10.0)
    step = [b - v.numpy() for v, b in zip(model.trainable_variables, before, strict=True)]
    np.testing.assert_allclose(np.sqrt(sum((s**2).sum() for s in step)), 2.0, rtol=1e-5)
    with pytest.raises(UserInputError, match="optimizer.global_clipnorm"):
        optim.build_optimizer(optim.OptimizerConfig(global_clipnorm=0.0), total_steps=10)
