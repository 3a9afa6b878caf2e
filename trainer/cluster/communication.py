"""How replicas communicate: the gin-bound settings of the Mirrored and MultiWorkerMirrored all-reduces.

Both are built once at the root (`cli`) and handed to `strategies.create_strategy`.
"""

import dataclasses

import gin
import tensorflow as tf

from trainer.common import validate
from trainer.common.errors import UserInputError

_CROSS_DEVICE_OPS = ("auto", "nccl", "hierarchical_copy", "reduce_to_one")
_COMMUNICATION_IMPLEMENTATIONS = ("auto", "ring", "nccl")


@gin.configurable("mirrored")
@dataclasses.dataclass(frozen=True)
class MirroredConfig:
    """How MirroredStrategy sums gradients across local devices; bound in gin as `mirrored.<field>`.

    Attributes:
      cross_device_ops: `auto` (TensorFlow's choice: NCCL when every device is a GPU), `nccl` (NCCL all-reduce;
        GPUs only), `hierarchical_copy` (reduce within groups of GPUs, then across; made for DGX-1-like
        topologies without full NVLink), `reduce_to_one` (copy everything to one device and broadcast back;
        the slowest, works everywhere).
    """

    cross_device_ops: str = "auto"

    def __post_init__(self):
        validate.choice("gin binding mirrored.cross_device_ops", self.cross_device_ops, _CROSS_DEVICE_OPS)

    def build(self, num_gpus: int) -> tf.distribute.CrossDeviceOps | None:
        """Returns the CrossDeviceOps to hand MirroredStrategy (None lets TensorFlow choose)."""
        if self.cross_device_ops == "nccl" and not num_gpus:
            raise UserInputError(
                "gin binding mirrored.cross_device_ops: expected a value that works without GPUs on this machine "
                "(it has none), received 'nccl' (NCCL runs on GPUs only). Use 'reduce_to_one' or "
                "'hierarchical_copy', or leave it at 'auto'."
            )
        if self.cross_device_ops == "nccl":
            return tf.distribute.NcclAllReduce()
        if self.cross_device_ops == "hierarchical_copy":
            return tf.distribute.HierarchicalCopyAllReduce()
        if self.cross_device_ops == "reduce_to_one":
            return tf.distribute.ReductionToOneDevice()
        return None


@gin.configurable("multi_worker")
@dataclasses.dataclass(frozen=True)
class MultiWorkerConfig:
    """How MultiWorkerMirroredStrategy communicates and notices a lost worker; gin `multi_worker.<field>`.

    Attributes:
      implementation: collective implementation: `auto`, `ring` (gRPC, CPU or GPU) or `nccl` (GPUs).
      timeout_seconds: fail a collective op (e.g. the gradient all-reduce) that has not completed after this
        long; None waits for ever. Set it well above the slowest step, first compilation included.
      heartbeat_timeout_seconds: a worker that has sent the coordination service no heartbeat for this long is
        declared lost and every other worker's collectives are aborted with an error naming it (TensorFlow's
        default is 10).
      join_timeout_seconds: a training task waits this long at start for every other one to be reachable,
        then stops with an error naming the missing task and its address (TensorFlow alone waits without end).
    """

    implementation: str = "auto"
    timeout_seconds: float | None = None
    heartbeat_timeout_seconds: int = 10
    join_timeout_seconds: float = 600.0

    def __post_init__(self):
        validate.choice("gin binding multi_worker.implementation", self.implementation, _COMMUNICATION_IMPLEMENTATIONS)
        if self.timeout_seconds is not None:
            validate.positive_number("gin binding multi_worker.timeout_seconds", self.timeout_seconds)
        validate.positive_int("gin binding multi_worker.heartbeat_timeout_seconds", self.heartbeat_timeout_seconds)
        validate.positive_number("gin binding multi_worker.join_timeout_seconds", self.join_timeout_seconds)

    def communication_options(self) -> tf.distribute.experimental.CommunicationOptions:
        """Returns the CommunicationOptions for the strategy's collectives."""
        return tf.distribute.experimental.CommunicationOptions(
            implementation=self.implementation.upper(), timeout_seconds=self.timeout_seconds
        )
