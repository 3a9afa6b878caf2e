"""Test setup: two virtual CPU devices, made before TensorFlow initialises its runtime.

Mirrored tests need more than one device; on a CPU-only machine they are logical CPUs, which can only be
configured before the first op runs, hence this happens at import time of the test session.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import gin  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

NUM_TEST_CPU_DEVICES = 2

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(NUM_TEST_CPU_DEVICES)]
)


@pytest.fixture
def clear_gin():
    """Clears gin's bindings before and after a test, so no test sees another's configuration."""
    gin.clear_config()
    yield
    gin.clear_config()
