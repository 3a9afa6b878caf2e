"""The machine's measured dense peak: a chain of large matmuls inside one `tf.function`.

A single matmul per call under-reads the peak (call overhead, and the cores idle while it is dispatched); a chain
of `chain` dependent matmuls of size×size amortises both, so the best of `repeats` timings approaches what the
hardware's matmul kernels sustain. Small matmuls under-read it too: 512² chains read 0.19 TFLOP/s on a 2-core
Xeon whose 4096² chains reach 0.32. This one measurement is the MFU denominator everywhere: TensorBoard's `mfu`,
the end-of-run summary and `make bench`. It runs in the same process as training, so MFU compares the trainer
against this machine in its current state.
"""

import dataclasses
import time

import numpy as np
import tensorflow as tf

# The measurement's defaults (also `make bench`'s): ten chained 4096² matmuls, best of three timed calls.
DEFAULT_SIZE = 4096
DEFAULT_CHAIN = 10
DEFAULT_REPEATS = 3


@dataclasses.dataclass(frozen=True)
class Peak:
    """Dense matmul throughput of one dtype (per replica when measured under a strategy)."""

    dtype: str
    flops_per_second: float
    seconds: tuple[float, ...]
    size: int
    chain: int


def _operands(dtype: tf.DType, size: int) -> tuple[tf.Tensor, tf.Tensor]:
    left = tf.random.stateless_normal([size, size], seed=(0, 0))
    right = tf.random.stateless_normal([size, size], seed=(0, 1)) / np.sqrt(size)
    return tf.cast(left, dtype), tf.cast(right, dtype)


def matmul_chain_peak(
    dtype: tf.DType = tf.float32,
    size: int = DEFAULT_SIZE,
    chain: int = DEFAULT_CHAIN,
    repeats: int = DEFAULT_REPEATS,
    strategy: tf.distribute.Strategy | None = None,
) -> Peak:
    """Best FLOP/s of `repeats` timed calls of a tf.function doing `chain` dependent size×size matmuls.

    One untimed call first traces and warms up the kernels. The right operand is scaled by 1/sqrt(size) so the
    product keeps unit magnitude along the chain (no overflow, no denormals slowing the arithmetic down).

    Args:
      dtype: the compute dtype (float32, or bfloat16/float16 under mixed precision).
      size, chain, repeats: the matrix side, the dependent matmuls per call, the timed calls.
      strategy: every replica of this worker runs the chain at once on its own device, as replicas share hosts
        and links in training, and the rate is per replica. Default: the current strategy (outside any scope,
        the default one, which runs on the default device).
    """
    if size < 1 or chain < 1 or repeats < 1:
        raise ValueError(f"matmul_chain_peak: expected size, chain, repeats >= 1, received {size}, {chain}, {repeats}.")
    strategy = strategy or tf.distribute.get_strategy()

    # Each replica makes its own operands on its device, once, outside the timed calls.
    def replica_operands() -> tuple[tf.Tensor, tf.Tensor]:
        return _operands(dtype, size)

    @tf.function
    def all_operands():
        return strategy.run(replica_operands)

    operands = all_operands()

    def replica_chain(pair: tuple[tf.Tensor, tf.Tensor]) -> tf.Tensor:
        x, w = pair
        for _ in range(chain):
            x = tf.matmul(x, w)
        # Reducing to a scalar makes the whole chain necessary without copying the result to the host.
        return tf.reduce_sum(tf.cast(x, tf.float32))

    @tf.function
    def chained(pair) -> list[tf.Tensor]:
        # Local results only: no collective, so each worker of a cluster measures on its own.
        return strategy.experimental_local_results(strategy.run(replica_chain, args=(pair,)))

    def timed_call() -> float:
        started = time.perf_counter()
        [result.numpy() for result in chained(operands)]
        return time.perf_counter() - started

    timed_call()
    seconds = tuple(timed_call() for _ in range(repeats))
    flops = chain * 2.0 * size**3
    return Peak(dtype=dtype.name, flops_per_second=flops / min(seconds), seconds=seconds, size=size, chain=chain)
