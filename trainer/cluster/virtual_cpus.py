"""Splitting the host CPU into logical devices, so that Mirrored can be tried on a machine without GPUs."""

import tensorflow as tf

from trainer.common.errors import UserInputError


def configure_virtual_cpus(count: int) -> None:
    """Splits the host CPU into `count` logical devices (`--virtual_cpus`); 0 or 1 leaves the CPU whole.

    Must run before TensorFlow initialises its runtime (before the first op).
    """
    if count <= 1:
        return
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
        )
    except RuntimeError as error:
        raise UserInputError(
            f"--virtual_cpus={count}: TensorFlow was already initialised, so the CPU can no longer be split ({error})."
        ) from None
