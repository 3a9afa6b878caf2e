"""The writer every converter shares: validates examples, writes sharded TFRecords and the dataset JSON.

A dataset is written into a hidden staging directory next to the output directory and renamed into place
once complete, so a crash never leaves half a dataset where the trainer would read it.
"""

import collections
import collections.abc
import concurrent.futures
import dataclasses
import functools
import math
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import tensorflow as tf
from absl import logging

from trainer.common import validate
from trainer.common.errors import UserInputError
from trainer.data import info as info_lib
from trainer.data import label_stats
from trainer.data.convert.source import BadExample, DatasetSource, SourceExample, SplitSource, serialized_example

# One shard per this many examples unless --num_shards says otherwise: VOC's 1,464 training images make 3
# shards, its 10,582 trainaug images 21, enough files for file-based sharding over that many input pipelines.
EXAMPLES_PER_SHARD = 500
# Shards of a split whose size is unknown before reading it (a tfds split without metadata); empty ones
# are dropped at the end.
_SHARDS_WHEN_COUNT_UNKNOWN = 8
# How many of the most common image sizes the dataset JSON lists per split.
_IMAGE_SIZES_LISTED = 32
_LOG_EVERY_EXAMPLES = 500
_WRITE_ORDER_SEED = 0


@dataclasses.dataclass
class SplitReport:
    """What happened to one split: examples written, and every skipped example with the reason."""

    name: str
    num_written: int = 0
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    labels: label_stats.LabelCounts = dataclasses.field(default_factory=label_stats.LabelCounts)
    channel_sums: np.ndarray | float = 0.0
    channel_squares: np.ndarray | float = 0.0
    num_pixels: int = 0

    def channel_statistics(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, standard deviation) of each image channel over the written examples."""
        mean = self.channel_sums / self.num_pixels
        std = np.sqrt(np.maximum(self.channel_squares / self.num_pixels - np.square(mean), 0.0))
        return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _ordered_map(function: Callable, items: Iterable, num_workers: int) -> Iterator:
    """Yields `function(item)` in the order of `items`, computing at most 2 * num_workers ahead.

    Results are yielded as `(item, result_or_exception)` so the caller decides what an error means.
    """

    def call(item):
        try:
            return function(item)
        except BadExample as error:
            return error

    if num_workers <= 1:
        for item in items:
            yield item, call(item)
        return
    with concurrent.futures.ThreadPoolExecutor(num_workers) as executor:
        pending: collections.deque = collections.deque()
        for item in items:
            pending.append((item, executor.submit(call, item)))
            if len(pending) >= 2 * num_workers:
                item, future = pending.popleft()
                yield item, future.result()
        while pending:
            item, future = pending.popleft()
            yield item, future.result()


def _num_shards(split: SplitSource, num_shards: int) -> int:
    if num_shards > 0:
        return num_shards
    if split.num_examples is None:
        return _SHARDS_WHEN_COUNT_UNKNOWN
    return max(1, math.ceil(split.num_examples / EXAMPLES_PER_SHARD))


@dataclasses.dataclass(frozen=True)
class _Conversion:
    """What every split of one `write_dataset` call shares."""

    staging: str
    target: str
    class_names: tuple[str, ...]
    ignore_label: int
    image_channels: int
    image_dtype: str
    num_shards: int
    skip_bad_examples: bool
    num_workers: int


class _ShardWriter:
    """Writes one split's records round-robin into temporary shards, and names the non-empty ones at the end."""

    def __init__(self, staging: str, split_name: str, num_shards: int):
        self._staging = staging
        self._split_name = split_name
        self._temporary = [os.path.join(staging, f".{split_name}-{k:05d}.tmp") for k in range(num_shards)]
        self._counts = [0] * num_shards
        self._writers = [tf.io.TFRecordWriter(path) for path in self._temporary]
        self.num_written = 0
        self.sizes: collections.Counter = collections.Counter()

    def write(self, serialized: bytes, size: tuple[int, int]) -> None:
        # Round-robin over the written examples keeps shard sizes within one of each other.
        shard = self.num_written % len(self._writers)
        self._writers[shard].write(serialized)
        self._counts[shard] += 1
        self.sizes[size] += 1
        self.num_written += 1

    def close(self) -> None:
        for writer in self._writers:
            writer.close()

    def finish(self, target: str) -> tuple[str, ...]:
        """Renames the shards into place; returns their paths as they will be under `target`."""
        # Fewer examples than shards leaves some empty: they are dropped (an empty file would give an input
        # pipeline nothing to read) and the rest named k-of-n for the shards that remain.
        kept = [path for path, count in zip(self._temporary, self._counts, strict=True) if count]
        for path in self._temporary:
            if path not in kept:
                tf.io.gfile.remove(path)
        files = []
        for k, path in enumerate(kept):
            name = f"{self._split_name}-{k:05d}-of-{len(kept):05d}.tfrecord"
            tf.io.gfile.rename(path, os.path.join(self._staging, name))
            files.append(os.path.join(target, name))
        return tuple(files)


def _write_order(split: SplitSource) -> Iterable[SourceExample]:
    if not isinstance(split.examples, collections.abc.Sequence):
        return split.examples
    # Sources list examples grouped (Cityscapes by city, VOC by year) and the trainer shuffles records
    # within windows, so the files hold them in a seeded random order instead.
    order = np.random.default_rng(_WRITE_ORDER_SEED).permutation(len(split.examples))
    return [split.examples[i] for i in order]


def _skip_bad_example(
    split: SplitSource, example: SourceExample, error: BadExample, report: SplitReport, skip_bad_examples: bool
) -> None:
    """Records `example` as skipped, or raises UserInputError when bad examples may not be skipped."""
    if not skip_bad_examples:
        raise UserInputError(
            f"Converting split {split.name!r}: bad example {error}. Fix or remove it, or pass "
            "--skip_bad_examples to leave bad examples out (each one is counted and reported)."
        )
    logging.warning("Skipping bad example %s", error)
    report.skipped.append((example.key, str(error)))


def _write_examples(split: SplitSource, conversion: _Conversion, shards: _ShardWriter, report: SplitReport) -> None:
    started = time.perf_counter()
    validated = functools.partial(
        serialized_example,
        num_classes=len(conversion.class_names),
        ignore_label=conversion.ignore_label,
        channels=conversion.image_channels,
        dtype=conversion.image_dtype,
    )
    for example, result in _ordered_map(validated, _write_order(split), conversion.num_workers):
        if isinstance(result, BadExample):
            _skip_bad_example(split, example, result, report, conversion.skip_bad_examples)
            continue
        shards.write(result.serialized, result.size)
        report.labels.add(result.label_histogram)
        report.channel_sums = report.channel_sums + result.channel_sums
        report.channel_squares = report.channel_squares + result.channel_squares
        report.num_pixels += result.size[0] * result.size[1]
        report.num_written = shards.num_written
        if report.num_written % _LOG_EVERY_EXAMPLES == 0:
            logging.info(
                "%s: %d examples written (%.1f/s)",
                split.name,
                report.num_written,
                report.num_written / (time.perf_counter() - started),
            )


def _split_info(
    name: str, files: tuple[str, ...], report: SplitReport, sizes: collections.Counter, conversion: "_Conversion"
) -> info_lib.SplitInfo:
    heights = [h for h, _ in sizes]
    widths = [w for _, w in sizes]
    return info_lib.SplitInfo(
        name=name,
        files=files,
        num_examples=report.num_written,
        num_skipped=len(report.skipped),
        min_image_size=(min(heights), min(widths)),
        max_image_size=(max(heights), max(widths)),
        image_sizes=tuple((h, w, count) for (h, w), count in sizes.most_common(_IMAGE_SIZES_LISTED)),
        class_pixels=report.labels.class_pixels(len(conversion.class_names)),
        class_images=report.labels.class_images(len(conversion.class_names)),
        ignored_pixels=int(report.labels.pixels[conversion.ignore_label]),
    )


def _write_split(split: SplitSource, conversion: _Conversion) -> tuple[info_lib.SplitInfo, SplitReport]:
    """Writes one split's shards into the staging directory; returns its SplitInfo (paths under the target)."""
    report = SplitReport(split.name)
    started = time.perf_counter()
    shards = _ShardWriter(conversion.staging, split.name, _num_shards(split, conversion.num_shards))
    try:
        _write_examples(split, conversion, shards, report)
    finally:
        shards.close()
    if not report.num_written:
        raise UserInputError(
            f"Converting split {split.name!r}: expected at least one example, received none "
            f"({len(report.skipped)} skipped as bad). Check --source_dir and the split's files."
        )
    label_stats.check_not_binary_ignored(
        f"Converting split {split.name!r}",
        report.labels.pixels,
        conversion.class_names,
        conversion.ignore_label,
        f"If {conversion.ignore_label} marks the foreground, pass --binary (the same as "
        f"--label_map={conversion.ignore_label}:1) to make it class 1.",
    )
    files = shards.finish(conversion.target)
    logging.info(
        "%s: %d examples in %d files, %d skipped, %.1f s",
        split.name,
        report.num_written,
        len(files),
        len(report.skipped),
        time.perf_counter() - started,
    )
    return _split_info(split.name, files, report, shards.sizes, conversion), report


def _is_nonempty_directory(path: str) -> bool:
    return tf.io.gfile.isdir(path) and bool(tf.io.gfile.listdir(path))


def _move_into_place(staging: str, target: str) -> None:
    """Renames `staging` to `target`, replacing what was there (only after the new dataset is complete)."""
    if not tf.io.gfile.exists(target):
        tf.io.gfile.rename(staging, target)
        return
    old = f"{staging}.old"
    tf.io.gfile.rename(target, old)
    tf.io.gfile.rename(staging, target)
    tf.io.gfile.rmtree(old)


def _check_request(source: DatasetSource, output_dir: str, num_shards: int, overwrite: bool) -> None:
    split_names = [split.name for split in source.splits]
    validate.choice("--train_split", source.train_split, split_names)
    validate.choice("--eval_split", source.eval_split, split_names)
    validate.non_negative_int("--num_shards", num_shards)
    if _is_nonempty_directory(output_dir) and not overwrite:
        raise UserInputError(
            f"--output_dir: expected a new or empty directory, received {output_dir!r} which holds files. "
            "Pass --overwrite to replace it (the old dataset stays until the new one is complete)."
        )


def _make_staging_directory(output_dir: str) -> str:
    """Creates and returns a new hidden directory beside `output_dir` (same file system, so renames are cheap)."""
    parent, base = os.path.split(output_dir)
    if parent:
        tf.io.gfile.makedirs(parent)
    staging = os.path.join(parent, f".{base}.tmp-{uuid.uuid4().hex}")
    tf.io.gfile.makedirs(staging)
    return staging


def _dataset_info(
    source: DatasetSource, splits: list[info_lib.SplitInfo], train_report: SplitReport
) -> info_lib.DatasetInfo:
    by_name = {split.name: split for split in splits}
    train, evaluation = by_name[source.train_split], by_name[source.eval_split]
    channel_mean, channel_std = train_report.channel_statistics()
    return info_lib.DatasetInfo(
        name=source.name,
        num_classes=len(source.class_names),
        class_names=source.class_names,
        ignore_label=source.ignore_label,
        train_files=train.files,
        eval_files=evaluation.files,
        num_train_examples=train.num_examples,
        num_eval_examples=evaluation.num_examples,
        max_image_size=evaluation.max_image_size,
        palette=source.palette,
        splits=tuple(splits),
        image_channels=source.image_channels,
        image_dtype=source.image_dtype,
        channel_mean=channel_mean,
        channel_std=channel_std,
    )


def write_dataset(
    source: DatasetSource,
    output_dir: str,
    num_shards: int = 0,
    skip_bad_examples: bool = False,
    num_workers: int = 1,
    overwrite: bool = False,
) -> tuple[info_lib.DatasetInfo, list[SplitReport]]:
    """Validates and writes every split of `source` to `output_dir` with its `dataset_info.json`.

    Args:
      source: what to convert.
      output_dir: the dataset's directory (local or gs://); created, or replaced with `overwrite`.
      num_shards: TFRecord files per split; 0 picks one per `EXAMPLES_PER_SHARD` examples.
      skip_bad_examples: leave bad examples out (counted and reported) instead of stopping at the first.
      num_workers: threads reading and validating examples.
      overwrite: replace an existing non-empty `output_dir` (only once the new dataset is complete).

    Returns:
      The `DatasetInfo` saved in the JSON, and one report per split.

    Raises:
      UserInputError: at the first bad example (naming its file) unless `skip_bad_examples`, when a split
        ends up empty, or when `output_dir` holds files and `overwrite` is False.
    """
    output_dir = output_dir.rstrip("/")
    _check_request(source, output_dir, num_shards, overwrite)
    staging = _make_staging_directory(output_dir)
    conversion = _Conversion(
        staging=staging,
        target=output_dir,
        class_names=source.class_names,
        ignore_label=source.ignore_label,
        image_channels=source.image_channels,
        image_dtype=source.image_dtype,
        num_shards=num_shards,
        skip_bad_examples=skip_bad_examples,
        num_workers=num_workers,
    )
    try:
        written = [_write_split(split, conversion) for split in source.splits]
        reports = [report for _, report in written]
        train_report = next(report for report in reports if report.name == source.train_split)
        info = _dataset_info(source, [split_info for split_info, _ in written], train_report)
        train = info.train_split()
        label_stats.warn_missing_classes(f"Training split {train.name!r}", train.class_pixels, info.class_names)
        info_lib.save(info, os.path.join(staging, info_lib.INFO_FILENAME), files_relative_to=output_dir)
        _move_into_place(staging, output_dir)
    except BaseException:
        # Nothing of a failed conversion stays behind; the exception goes on to the caller.
        if tf.io.gfile.exists(staging):
            tf.io.gfile.rmtree(staging)
        raise
    return info, reports
