"""The learning-rate schedule and optimizer construction."""

import numpy as np
import pytest

from trainer import optim
from trainer.config import ConfigError


def test_schedule_warms_up_linearly_then_decays_polynomially():
    schedule = optim.WarmupPolynomialDecay(0.1, decay_steps=100, warmup_steps=10, power=0.9)
    np.testing.assert_allclose(float(schedule(0)), 0.0)
    np.testing.assert_allclose(float(schedule(5)), 0.05, rtol=1e-6)
    np.testing.assert_allclose(float(schedule(50)), 0.1 * 0.5**0.9, rtol=1e-6)
    np.testing.assert_allclose(float(schedule(100)), 0.0, atol=1e-9)
    np.testing.assert_allclose(float(schedule(150)), 0.0, atol=1e-9)


def test_warmup_longer_than_training_is_a_clear_error():
    with pytest.raises(ConfigError, match="optimizer.warmup_steps"):
        optim.build_optimizer(total_steps=10, warmup_steps=10)


def test_optimizer_is_sgd_with_momentum():
    optimizer = optim.build_optimizer(total_steps=10, learning_rate=0.2, momentum=0.8)
    assert type(optimizer).__name__ == "SGD"
    assert optimizer.momentum == 0.8


def test_adam_is_available_and_unknown_algorithms_are_named():
    assert type(optim.build_optimizer(total_steps=10, algorithm="adam")).__name__ == "Adam"
    with pytest.raises(ConfigError, match=r"optimizer.algorithm: expected one of \{sgd, adam\}, received 'lamb'"):
        optim.build_optimizer(total_steps=10, algorithm="lamb")
