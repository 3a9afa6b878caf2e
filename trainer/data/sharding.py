"""Which records each input pipeline reads, and the per-replica batch it makes of them."""

import dataclasses
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from trainer.common import validate


@dataclasses.dataclass(frozen=True)
class TrainShard:
    """The training files one input pipeline reads, and how it keeps its share of their records.

    Attributes:
      files: the files this pipeline reads, in the order every pipeline agrees on.
      num_pipelines: the input pipelines sharing the training split.
      pipeline_id: this pipeline's index among them.
      by_file: True when each pipeline reads its own files; False when there are fewer files than pipelines,
        so every pipeline reads all of them and keeps every `num_pipelines`-th record.
    """

    files: tuple[str, ...]
    num_pipelines: int
    pipeline_id: int
    by_file: bool


def pipeline_placement(input_context: tf.distribute.InputContext | None) -> tuple[int, int]:
    """Returns (num_input_pipelines, input_pipeline_id); one pipeline without a context."""
    if input_context is None:
        return 1, 0
    return input_context.num_input_pipelines, input_context.input_pipeline_id


def per_replica_batch_size(
    binding: str, global_batch_size: int, input_context: tf.distribute.InputContext | None
) -> int:
    """Returns the batch of one replica, checking that `global_batch_size` (named `binding`) splits evenly.

    Raises:
      UserInputError: if the global batch is not a positive multiple of the replicas in sync.
    """
    validate.positive_int(binding, global_batch_size)
    if input_context is None:
        return global_batch_size
    return validate.divisible_batch(binding, global_batch_size, input_context.num_replicas_in_sync)


def train_shard(train_files: Sequence[str], seed: int, num_pipelines: int, pipeline_id: int) -> TrainShard:
    """Returns the share of `train_files` that pipeline `pipeline_id` of `num_pipelines` reads."""
    # Every pipeline computes the same permutation, so their file shards are disjoint and cover all files.
    files = [str(f) for f in np.random.default_rng(seed).permutation(sorted(train_files))]
    by_file = len(files) >= num_pipelines
    if by_file:
        files = files[pipeline_id::num_pipelines]
    return TrainShard(tuple(files), num_pipelines, pipeline_id, by_file)
