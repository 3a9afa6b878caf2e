"""The writer every converter shares: validates examples, writes sharded TFRecords and the dataset JSON.

A dataset is written into a hidden staging directory next to the output directory and renamed into place
once complete, so a crash never leaves half a dataset where the trainer would read it.
"""

import collections
import collections.abc
import concurrent.futures
import dataclasses
import math
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import tensorflow as tf
from absl import logging

from trainer.common.errors import UserInputError
from trainer.data import info as info_lib
from trainer.data import schema

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


class BadExample(Exception):
    """An example that cannot be converted; the message says why (the writer adds which file)."""


@dataclasses.dataclass(frozen=True)
class SourceExample:
    """One example of a source dataset, read when the writer gets to it.

    Attributes:
      key: stored as `image/filename` (a path relative to the source, or a tfds id).
      location: where it comes from, named in errors (the image and mask paths).
      read: returns the image (its JPEG/PNG/BMP/GIF file bytes, or a uint8 [H, W, 3] array) and the label map
        (uint8 [H, W] of class ids and the ignore label, already mapped from the source's ids); raises
        `BadExample` (or an I/O or decoding error) when the example is unusable.
    """

    key: str
    location: str
    read: Callable[[], tuple[bytes | np.ndarray, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class SplitSource:
    """One split of a source dataset.

    Attributes:
      name: the split's name in the output (`train`, `val`, ...).
      examples: its examples; a sequence is written in a seeded random order, an iterable (tfds, already
        shuffled when prepared) in its own.
      num_examples: their number when known before reading them (it picks the number of shards), else None.
    """

    name: str
    examples: Iterable[SourceExample]
    num_examples: int | None


@dataclasses.dataclass(frozen=True)
class DatasetSource:
    """A source dataset as a converter describes it.

    Attributes:
      name: the dataset's name in the JSON.
      class_names: one per class id.
      ignore_label: the label of pixels to skip (outside the class ids).
      palette: one RGB colour per class, or None.
      splits: the splits to write.
      train_split: the split the JSON names as the training one.
      eval_split: the split the JSON names as the evaluation one.
    """

    name: str
    class_names: tuple[str, ...]
    ignore_label: int
    palette: tuple[tuple[int, int, int], ...] | None
    splits: tuple[SplitSource, ...]
    train_split: str
    eval_split: str


@dataclasses.dataclass
class SplitReport:
    """What happened to one split: examples written, and every skipped example with the reason."""

    name: str
    num_written: int = 0
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)


def _check_label(label: np.ndarray, num_classes: int, ignore_label: int) -> None:
    values = np.unique(label)
    bad = values[(values >= num_classes) & (values != ignore_label)]
    if bad.size:
        raise BadExample(
            f"expected label values in [0, {num_classes}) or the ignore label {ignore_label}, "
            f"received {', '.join(str(v) for v in bad[:8])}{' ...' if bad.size > 8 else ''}"
        )


def _validated(example: SourceExample, num_classes: int, ignore_label: int) -> tuple[bytes, tuple[int, int]]:
    """Reads, decodes and checks one example; returns it serialized in the trainer's schema, and its size.

    Raises:
      BadExample: naming `example.location` and what is wrong with it.
    """
    try:
        image, label = example.read()
        encoded = None
        if isinstance(image, bytes):
            # The file's own bytes are kept when the trainer reads the format (JPEG, PNG); decoding here
            # checks them and gives the size. Other formats are stored PNG-encoded.
            encoded = image if schema.sniff_image_format(image) else None
            try:
                image = tf.io.decode_image(image, channels=3, expand_animations=False).numpy()
            except tf.errors.InvalidArgumentError as error:
                raise BadExample(f"the image does not decode ({error.message.splitlines()[0]})") from None
        image = np.asarray(image)
        if image.ndim == 3 and image.shape[-1] == 1:
            image = np.repeat(image, 3, axis=-1)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            raise BadExample(f"expected an RGB image of uint8, received {image.dtype} {list(image.shape)}")
        label = np.asarray(label)
        if label.ndim == 3 and label.shape[-1] == 1:
            label = label[..., 0]
        if label.dtype != np.uint8 or label.ndim != 2:
            raise BadExample(
                f"expected a single-channel label map of uint8, received {label.dtype} {list(label.shape)}"
            )
        if image.shape[:2] != label.shape:
            raise BadExample(
                f"expected the label map to have the image's height and width {image.shape[0]}x{image.shape[1]}, "
                f"received {label.shape[0]}x{label.shape[1]}"
            )
        _check_label(label, num_classes, ignore_label)
        return schema.encode_example(image, label, example.key, encoded_image=encoded), label.shape
    except BadExample as error:
        raise BadExample(f"{example.location}: {error}") from None
    except (OSError, ValueError, tf.errors.OpError) as error:
        # Unreadable or undecodable files (PIL raises OSError subclasses, numpy ValueError).
        raise BadExample(f"{example.location}: {type(error).__name__}: {error}") from None


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


def _write_split(
    split: SplitSource,
    staging: str,
    target: str,
    num_classes: int,
    ignore_label: int,
    num_shards: int,
    skip_bad_examples: bool,
    num_workers: int,
) -> tuple[info_lib.SplitInfo, SplitReport]:
    """Writes one split's shards into `staging`; returns its SplitInfo (paths under `target`) and report."""
    report = SplitReport(split.name)
    num_shards = _num_shards(split, num_shards)
    temporary = [os.path.join(staging, f".{split.name}-{k:05d}.tmp") for k in range(num_shards)]
    shard_counts = [0] * num_shards
    sizes: collections.Counter = collections.Counter()
    started = time.perf_counter()
    source_examples = split.examples
    if isinstance(source_examples, collections.abc.Sequence):
        # Sources list examples grouped (Cityscapes by city, VOC by year) and the trainer shuffles records
        # within windows, so the files hold them in a seeded random order instead.
        order = np.random.default_rng(_WRITE_ORDER_SEED).permutation(len(source_examples))
        source_examples = [source_examples[i] for i in order]
    writers = [tf.io.TFRecordWriter(path) for path in temporary]
    try:
        examples = _ordered_map(lambda e: _validated(e, num_classes, ignore_label), source_examples, num_workers)
        for example, result in examples:
            if isinstance(result, BadExample):
                if not skip_bad_examples:
                    raise UserInputError(
                        f"Converting split {split.name!r}: bad example {result}. Fix or remove it, or pass "
                        "--skip_bad_examples to leave bad examples out (each one is counted and reported)."
                    )
                logging.warning("Skipping bad example %s", result)
                report.skipped.append((example.key, str(result)))
                continue
            # Round-robin over the written examples keeps shard sizes within one of each other.
            shard = report.num_written % num_shards
            serialized, size = result
            writers[shard].write(serialized)
            shard_counts[shard] += 1
            sizes[size] += 1
            report.num_written += 1
            if report.num_written % _LOG_EVERY_EXAMPLES == 0:
                logging.info(
                    "%s: %d examples written (%.1f/s)",
                    split.name,
                    report.num_written,
                    report.num_written / (time.perf_counter() - started),
                )
    finally:
        for writer in writers:
            writer.close()
    if not report.num_written:
        raise UserInputError(
            f"Converting split {split.name!r}: expected at least one example, received none "
            f"({len(report.skipped)} skipped as bad). Check --source_dir and the split's files."
        )
    # Fewer examples than shards leaves some empty: they are dropped (an empty file would give an input
    # pipeline nothing to read) and the rest named k-of-n for the shards that remain.
    kept = [path for path, count in zip(temporary, shard_counts, strict=True) if count]
    for path in temporary:
        if path not in kept:
            tf.io.gfile.remove(path)
    files = []
    for k, path in enumerate(kept):
        name = f"{split.name}-{k:05d}-of-{len(kept):05d}.tfrecord"
        tf.io.gfile.rename(path, os.path.join(staging, name))
        files.append(os.path.join(target, name))
    heights = [h for h, _ in sizes]
    widths = [w for _, w in sizes]
    split_info = info_lib.SplitInfo(
        name=split.name,
        files=tuple(files),
        num_examples=report.num_written,
        num_skipped=len(report.skipped),
        min_image_size=(min(heights), min(widths)),
        max_image_size=(max(heights), max(widths)),
        image_sizes=tuple((h, w, count) for (h, w), count in sizes.most_common(_IMAGE_SIZES_LISTED)),
    )
    logging.info(
        "%s: %d examples in %d files, %d skipped, %.1f s",
        split.name,
        report.num_written,
        len(files),
        len(report.skipped),
        time.perf_counter() - started,
    )
    return split_info, report


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
    split_names = [split.name for split in source.splits]
    for flag, split_name in (("--train_split", source.train_split), ("--eval_split", source.eval_split)):
        if split_name not in split_names:
            raise UserInputError(f"{flag}: expected one of the splits found {split_names}, received {split_name!r}")
    if num_shards < 0:
        raise UserInputError(f"--num_shards: expected 0 (automatic) or a positive int, received {num_shards}")
    if _is_nonempty_directory(output_dir) and not overwrite:
        raise UserInputError(
            f"--output_dir: expected a new or empty directory, received {output_dir!r} which holds files. "
            "Pass --overwrite to replace it (the old dataset stays until the new one is complete)."
        )
    parent, base = os.path.split(output_dir)
    if parent:
        tf.io.gfile.makedirs(parent)
    staging = os.path.join(parent, f".{base}.tmp-{uuid.uuid4().hex}")
    tf.io.gfile.makedirs(staging)
    try:
        splits, reports = [], []
        for split in source.splits:
            split_info, report = _write_split(
                split,
                staging,
                output_dir,
                len(source.class_names),
                source.ignore_label,
                num_shards,
                skip_bad_examples,
                num_workers,
            )
            splits.append(split_info)
            reports.append(report)
        by_name = {split.name: split for split in splits}
        train, evaluation = by_name[source.train_split], by_name[source.eval_split]
        info = info_lib.DatasetInfo(
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
        )
        info_lib.save(info, os.path.join(staging, info_lib.INFO_FILENAME), files_relative_to=output_dir)
        _move_into_place(staging, output_dir)
    except BaseException:
        # Nothing of a failed conversion stays behind; the exception goes on to the caller.
        if tf.io.gfile.exists(staging):
            tf.io.gfile.rmtree(staging)
        raise
    return info, reports
