"""The machine's measured dense peak: a chain of large matmuls inside one `tf.function`.

A single matmul per call under-reads the peak (call overhead, and the cores idle while it is dispatched); a chain
of `chain` dependent matmuls of size×size amortises both, so the best of `repeats` timings approaches what the
hardware's matmul kernels sustain. Measured in the same process as the training benchmark, so MFU compares the
trainer against this machine in its current state.
"""

import dataclasses
import time

import numpy as np
import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class Peak:
    """Dense matmul throughput of one dtype."""

    dtype: str
    flops_per_second: float
    seconds: tuple[float, ...]
    size: int
    chain: int


def matmul_chain_peak(dtype: tf.DType = tf.float32, size: int = 4096, chain: int = 10, repeats: int = 3) -> Peak:
    """Best FLOP/s of `repeats` timed calls of a tf.function doing `chain` dependent size×size matmuls.

    One untimed call first traces and warms up the kernels. The right operand is scaled by 1/sqrt(size) so the
    product keeps unit magnitude along the chain (no overflow, no denormals slowing the arithmetic down).
    """
    if size < 1 or chain < 1 or repeats < 1:
        raise ValueError(f"matmul_chain_peak: expected size, chain, repeats >= 1, received {size}, {chain}, {repeats}.")
    rng = np.random.default_rng(0)
    left = tf.constant(rng.standard_normal((size, size)), dtype)
    right = tf.constant(rng.standard_normal((size, size)) / np.sqrt(size), dtype)

    @tf.function
    def chained(x: tf.Tensor, w: tf.Tensor) -> tf.Tensor:
        for _ in range(chain):
            x = tf.matmul(x, w)
        # Reducing to a scalar makes the whole chain necessary without copying the result to the host.
        return tf.reduce_sum(tf.cast(x, tf.float32))

    chained(left, right).numpy()
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        chained(left, right).numpy()
        seconds.append(time.perf_counter() - started)
    flops = chain * 2.0 * size**3
    return Peak(dtype=dtype.name, flops_per_second=flops / min(seconds), seconds=tuple(seconds), size=size, chain=chain)
