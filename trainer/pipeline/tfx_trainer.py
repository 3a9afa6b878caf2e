"""The TFX `Trainer` module: `run_fn` trains with this trainer's `run()` and writes the serving SavedModel.

    Trainer(run_fn="trainer.pipeline.tfx_trainer.run_fn", examples=example_gen.outputs["examples"],
            custom_config={"gin_files": ["configs/quickstart.gin"], "gin_bindings": [...]}, ...)

`custom_config` passes the gin files and bindings through; the examples TFX hands over (`fn_args.train_files`,
`fn_args.eval_files`: ExampleGen's GZIP TFRecords of `trainer.data.schema` examples) become the
`tfrecord_dataset` that `run()` trains and evaluates on; `TrainArgs.num_steps`, when set, is `train.steps`.
The SavedModel of the trained weights, with both serving signatures (`serving_default`, `serve_encoded`), goes to
`fn_args.serving_model_dir`, where TFX's Pusher takes it from. Needs only TFX's `FnArgs`, not TFX itself.
"""

import os
from collections.abc import Mapping, Sequence
from typing import Any

import gin
import tensorflow as tf
from absl import logging

from trainer import train_lib
from trainer.common.errors import UserInputError
from trainer.core.config import parse_gin
from trainer.serving import saved_model

GIN_FILES = "gin_files"
GIN_BINDINGS = "gin_bindings"
STRATEGY = "strategy"
_CUSTOM_CONFIG_KEYS = (GIN_FILES, GIN_BINDINGS, STRATEGY)


def _strings(config: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = config.get(key, ())
    if isinstance(value, str) or not all(isinstance(item, str) for item in value):
        raise UserInputError(f"TFX Trainer custom_config[{key!r}]: expected a list of strings, received {value!r}.")
    return tuple(value)


def uncompressed_copies(patterns: Sequence[str], directory: str) -> str:
    """Writes the records of the files matching `patterns` (GZIP-compressed when named *.gz, as ExampleGen writes
    them) as plain TFRecord files into `directory`; returns their glob pattern.

    The input pipeline reads plain TFRecords (it shards and interleaves them by file).
    """
    files = sorted({path for pattern in patterns for path in tf.io.gfile.glob(pattern)})
    if not files:
        raise UserInputError(f"TFX Trainer: expected example files matching {list(patterns)}, found none.")
    tf.io.gfile.makedirs(directory)
    for index, path in enumerate(files):
        records = tf.data.TFRecordDataset(path, compression_type="GZIP" if path.endswith(".gz") else "")
        with tf.io.TFRecordWriter(os.path.join(directory, f"examples-{index:05d}.tfrecord")) as writer:
            for record in records:
                writer.write(record.numpy())
    return os.path.join(directory, "examples-*.tfrecord")


def _copy_tree(source: str, destination: str) -> None:
    for directory, _, names in tf.io.gfile.walk(source):
        target = os.path.join(destination, os.path.relpath(directory, source))
        tf.io.gfile.makedirs(target)
        for name in names:
            tf.io.gfile.copy(os.path.join(directory, name), os.path.join(target, name), overwrite=True)


def run_fn(fn_args: Any) -> None:
    """Trains on the examples of `fn_args` with `train_lib.run` and writes the SavedModel to its serving_model_dir.

    Args:
      fn_args: TFX's `FnArgs`: train_files, eval_files, model_run_dir, serving_model_dir, train_steps and
        custom_config ({"gin_files": [...], "gin_bindings": [...], "strategy": "auto"}, all optional).

    Raises:
      UserInputError: on an unknown custom_config key, or bad gin files or bindings.
    """
    config = dict(fn_args.custom_config or {})
    unknown = sorted(set(config) - set(_CUSTOM_CONFIG_KEYS))
    if unknown:
        raise UserInputError(
            f"TFX Trainer custom_config: expected keys among {_CUSTOM_CONFIG_KEYS}, received {unknown}."
        )
    model_dir = fn_args.model_run_dir
    examples_dir = os.path.join(model_dir, "examples")
    train_pattern = uncompressed_copies(fn_args.train_files, os.path.join(examples_dir, "train"))
    eval_pattern = uncompressed_copies(fn_args.eval_files, os.path.join(examples_dir, "eval"))
    bindings = [
        *_strings(config, GIN_BINDINGS),
        "run.dataset = @tfrecord_dataset",
        f"tfrecord_dataset.train_pattern = {train_pattern!r}",
        f"tfrecord_dataset.eval_pattern = {eval_pattern!r}",
        "export.at_end_of_training = True",
    ]
    if fn_args.train_steps:
        bindings.append(f"train.steps = {int(fn_args.train_steps)}")
    gin.clear_config()
    parse_gin(_strings(config, GIN_FILES), bindings)
    train_lib.run("train", model_dir, strategy=config.get(STRATEGY, "auto"))
    exports = os.path.join(model_dir, saved_model.EXPORT_SUBDIR)
    newest = max((name.rstrip("/") for name in tf.io.gfile.listdir(exports) if name.rstrip("/").isdigit()), key=int)
    _copy_tree(os.path.join(exports, newest), fn_args.serving_model_dir)
    logging.info("TFX Trainer: the SavedModel of step %s is in %s.", newest, fn_args.serving_model_dir)
