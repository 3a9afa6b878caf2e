"""Shared test helpers: tiny gin configs and reading TensorBoard event files back."""

import functools
import os

import gin
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

from trainer import train_lib  # also registers every gin configurable the smoke config binds
from trainer.observe.config import ObserveConfig

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE_GIN = os.path.join(REPO_ROOT, "configs", "smoke.gin")


def parse_smoke_config(data_dir: str, *bindings: str) -> None:
    """Clears gin and loads configs/smoke.gin with its dataset under `data_dir`, then `bindings`."""
    gin.clear_config()
    gin.parse_config_files_and_bindings([SMOKE_GIN], [f"synthetic_shapes.data_dir = '{data_dir}'", *bindings])


def scalar_events(log_dir: str) -> dict[str, list[tuple[int, float]]]:
    """Reads every scalar in `log_dir`'s event files with TensorBoard's own reader: tag -> [(step, value)]."""
    accumulator = event_accumulator.EventAccumulator(log_dir, size_guidance={event_accumulator.TENSORS: 0})
    accumulator.Reload()
    events = {}
    for tag in accumulator.Tags()["tensors"]:
        if accumulator.SummaryMetadata(tag).plugin_data.plugin_name != "scalars":
            continue
        events[tag] = [(event.step, float(tf.make_ndarray(event.tensor_proto))) for event in accumulator.Tensors(tag)]
    return events


def text_tags(log_dir: str) -> list[str]:
    """Tags of the text summaries in `log_dir`."""
    accumulator = event_accumulator.EventAccumulator(log_dir, size_guidance={event_accumulator.TENSORS: 0})
    accumulator.Reload()
    return [
        tag
        for tag in accumulator.Tags()["tensors"]
        if accumulator.SummaryMetadata(tag).plugin_data.plugin_name == "text"
    ]


@functools.cache
def mirrored_strategy() -> tf.distribute.MirroredStrategy:
    """One MirroredStrategy over the two test CPUs for the whole session.

    A second MirroredStrategy in the same process reuses collective instance keys and aborts with a shape
    mismatch, so every test shares this one.
    """
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


@functools.cache
def one_device_strategy() -> tf.distribute.OneDeviceStrategy:
    """One OneDeviceStrategy on the first test CPU."""
    return tf.distribute.OneDeviceStrategy("/cpu:0")


def smoke_run_state(model_dir: str, train_config, strategy: tf.distribute.Strategy | None = None, eval_batch: int = 4):
    """A `train_lib._Run` of the parsed (smoke) gin config, for tests that drive training and evaluation by hand."""
    return train_lib._Run(
        model_dir,
        strategy or one_device_strategy(),
        train_lib.synthetic_shapes(),
        train_lib.DeepLabV3Plus,
        train_config,
        train_lib.EvalConfig(global_batch_size=eval_batch),
        train_lib.InputPipeline(),
        ObserveConfig(),
    )


def tiny_deeplab(num_classes: int = 3):
    """A DeepLabV3+ small enough for unit tests (ResNet of one block per stage, width 4, no dropout)."""
    from trainer.models import DeepLabV3Plus, ResNet

    return DeepLabV3Plus(
        num_classes,
        backbone=ResNet(block_depths=(1, 1, 1, 1), base_filters=4, output_stride=16),
        aspp_filters=8,
        aspp_rates=(1, 2, 3),
        aspp_dropout_rate=0.0,
        low_level_filters=4,
        decoder_filters=8,
    )
