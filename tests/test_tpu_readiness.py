"""TPU readiness without a TPU: every config in configs/ compiles its train step with XLA under bfloat16.

Each config is parsed as a user would pass it, then shrunk through gin bindings (tiny widths, one block per
stage, 65x65 crops, a global batch of 2, a tiny synthetic dataset in place of its TFRecords). What a TPU
requires is then checked on CPU: every tensor the train and eval input pipelines yield has a fully static
shape, and the whole replica step (forward, loss, backward, optimizer update) on a real batch lowers to XLA
HLO under the `mixed_bfloat16` policy, which is where an op without an XLA kernel or a shape known only at
run time would fail. Lowering, not running: CPU code generation for nine models would take minutes and tells
nothing about TPUs; tests/test_loop_xla.py runs the trainer's XLA loop for every backbone.
"""

import glob
import os
import re

import gin
import pytest
import tensorflow as tf
import tf_keras as keras

from tests.helpers import REPO_ROOT, one_device_strategy
from trainer import train_lib  # noqa: F401  (registers every configurable a config may bind)
from trainer.core import losses, optim
from trainer.core.config import EvalConfig, TrainConfig, parse_gin
from trainer.data.pipeline import InputPipeline
from trainer.data.synthetic import synthetic_shapes
from trainer.models import DeepLabV3Plus

# Configs include each other by path from the repository root, wherever pytest runs from.
gin.add_config_file_search_path(REPO_ROOT)
pytestmark = pytest.mark.slow  # about 5 s a config on 2 CPU cores

CONFIGS = sorted(os.path.basename(path) for path in glob.glob(os.path.join(REPO_ROOT, "configs", "*.gin")))
CROP = 65  # 16k + 1, as the recipes' 513 and 769
GLOBAL_BATCH = 2
# The same network families at a fraction of the width and depth, so XLA compiles each in seconds.
TINY = (
    "ResNet.base_filters = 4",
    "ResNet.block_depths = (1, 1, 1, 1)",
    "Xception65.width_multiplier = 0.0625",
    "Xception65.middle_flow_blocks = 1",
    "MobileNetV2.width_multiplier = 0.35",
    "MobileNetV3.width_multiplier = 0.35",
    "EfficientNetV2.width_coefficient = 0.25",
    "EfficientNetV2.depth_coefficient = 0.25",
    "ConvNeXt.depths = (1, 1, 1, 1)",
    "ConvNeXt.projection_dims = (8, 16, 24, 32)",
    "DeepLabV3Plus.aspp_filters = 8",
    "DeepLabV3Plus.low_level_filters = 4",
    "DeepLabV3Plus.decoder_filters = 8",
    "DeepLabV3.aspp_filters = 8",
    "init.keras_h5 = None",
    "init.keras_weights = None",
    f"input_pipeline.crop_size = ({CROP}, {CROP})",
    f"input_pipeline.eval_size = ({CROP}, {CROP})",
    "input_pipeline.shuffle_buffer = 4",
    f"train.global_batch_size = {GLOBAL_BATCH}",
    f"evaluation.global_batch_size = {GLOBAL_BATCH}",
    "train.steps = 10",
    "optimizer.warmup_steps = 0",
    "train.jit_compile = True",
)


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    """A few 48x48 synthetic examples, written once, in the TFRecord schema the recipes read."""
    data_dir = str(tmp_path_factory.mktemp("tpu_readiness_data"))
    gin.clear_config()
    info = synthetic_shapes(data_dir=data_dir, image_size=48, num_train_examples=4, num_eval_examples=2, num_shards=1)
    return data_dir, info


@pytest.fixture
def mixed_bfloat16():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    yield
    keras.mixed_precision.set_global_policy("float32")
    gin.clear_config()


def _bound(selector: str, default):
    """The callable gin binds to `selector` (e.g. `run.model`), or `default` when the config leaves it."""
    try:
        return gin.query_parameter(selector).scoped_configurable_fn
    except ValueError:
        return default


def _parse_tiny(config: str, data_dir: str, info) -> None:
    gin.clear_config()
    data = (
        f"synthetic_shapes.data_dir = '{data_dir}'",
        "synthetic_shapes.image_size = 48",
        "synthetic_shapes.num_train_examples = 4",
        "synthetic_shapes.num_eval_examples = 2",
        "synthetic_shapes.num_shards = 1",
        f"tfrecord_dataset.train_pattern = '{info.train_files[0]}'",
        f"tfrecord_dataset.eval_pattern = '{info.eval_files[0]}'",
        # The your-own-data recipes read a converted dataset: the synthetic one has the same dataset_info.json.
        f"converted_dataset.data_dir = '{os.path.dirname(info.train_files[0])}'",
    )
    parse_gin([os.path.join(REPO_ROOT, "configs", config)], [*TINY, *data])


def test_every_config_is_covered():
    assert {"pascal_voc_resnet101_os16.gin", "cityscapes_resnet101_os16.gin", "cloud_tpu.gin"} <= set(CONFIGS)
    assert {
        "pascal_voc_efficientnetv2s_os16.gin",
        "cityscapes_convnext_tiny_os16.gin",
        "mobilenetv3_large_os16.gin",
    } <= set(CONFIGS)
    assert len(CONFIGS) >= 12


@pytest.mark.parametrize("config", CONFIGS)
def test_config_compiles_with_xla_under_bfloat16_on_static_shapes(config, tiny_dataset, mixed_bfloat16):
    data_dir, tiny_info = tiny_dataset
    _parse_tiny(config, data_dir, tiny_info)
    info = _bound("run.dataset", synthetic_shapes)()
    train_config, eval_config, pipeline = TrainConfig(), EvalConfig(), InputPipeline()
    assert train_config.jit_compile and pipeline.crop_size == (CROP, CROP)

    strategy = one_device_strategy()
    context = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0, num_replicas_in_sync=1)
    train_dataset = pipeline.train_dataset(info, train_config.global_batch_size, context)
    eval_dataset = pipeline.eval_dataset(info, eval_config.global_batch_size, context)
    for dataset, size in ((train_dataset, CROP), (eval_dataset, CROP)):
        images, labels = dataset.element_spec
        assert images.shape.is_fully_defined() and labels.shape.is_fully_defined(), dataset.element_spec
        assert images.shape == (GLOBAL_BATCH, size, size, 3) and labels.shape == (GLOBAL_BATCH, size, size)

    images, labels = next(iter(train_dataset))
    with strategy.scope():
        model = _bound("run.model", DeepLabV3Plus)(num_classes=info.num_classes)
        model(tf.zeros([1, CROP, CROP, 3]), training=False)
        optimizer = optim.build_optimizer(optim.OptimizerConfig(), total_steps=train_config.steps)
        optimizer.build(model.trainable_variables)
    assert model.compute_dtype == "bfloat16" and all(v.dtype == tf.float32 for v in model.trainable_variables)

    # What one replica runs each step under TPUStrategy, which compiles all of it with XLA.
    def replica_step(images: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            loss_sum, valid_pixels = losses.pixel_cross_entropy_sum(labels, logits, info.ignore_label)
            decay = train_config.l2_weight_decay * losses.l2_kernel_penalty(model.trainable_variables)
            loss = loss_sum / tf.maximum(valid_pixels, 1.0) + decay
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
        return loss

    hlo = tf.function(replica_step, jit_compile=True).experimental_get_compiler_ir(images, labels)(stage="hlo")
    assert "HloModule" in hlo
    # bfloat16 convolutions in both passes; float32 variables updated in place.
    assert re.search(r"bf16\[2,\d+,\d+,\d+\]\{[^}]*\} convolution\(", hlo), "no bfloat16 convolution"
    print(
        "COUNT", config, hlo.count(" convolution("), len([v for v in model.trainable_variables if "kernel" in v.name])
    )
