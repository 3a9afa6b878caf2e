"""Prints a model's parameter count and GFLOPs per image for a gin config and an input size.

  python -m trainer.tools.model_stats --gin_file=configs/pascal_voc_resnet101_os16.gin --height=513 --width=513

FLOPs are the dense architectural count of `trainer.observe.flops` for one image: 2 per multiply-add of every
convolution and matmul, a dilated 3×3 conv counted as a 3×3 conv (batch norm, activations and resizes are not
counted). It is the count the benchmark's MFU and TensorBoard's `mfu` use.
"""

import gin
import tensorflow as tf
import tf_keras as keras
from absl import app, flags

from trainer import train_lib
from trainer.common.errors import UserInputError
from trainer.core.config import parse_gin
from trainer.observe import flops

_GIN_FILE = flags.DEFINE_multi_string("gin_file", [], "Gin config file(s).")
_GIN_BINDINGS = flags.DEFINE_multi_string("gin_bindings", [], "Gin bindings applied after the files.")
_HEIGHT = flags.DEFINE_integer("height", 513, "Input height in pixels.")
_WIDTH = flags.DEFINE_integer("width", 513, "Input width in pixels.")
_NUM_CLASSES = flags.DEFINE_integer("num_classes", 21, "Number of classes of the classifier.")


def model_statistics(model: keras.Model, height: int, width: int) -> dict[str, float]:
    """Returns {"parameters", "trainable_parameters", "gflops_per_image"} of `model` on a height×width input."""
    count = flops.forward_flops_per_image(model, height, width)
    return {
        "parameters": model.count_params(),
        "trainable_parameters": int(sum(tf.size(v).numpy() for v in model.trainable_variables)),
        "gflops_per_image": count.total / 1e9,
    }


def build_configured_model(num_classes: int) -> keras.Model:
    """Builds the model the parsed gin config would train (`run.model`, default DeepLabV3Plus)."""
    try:
        model_fn = gin.query_parameter("run.model").scoped_configurable_fn
    except ValueError:
        model_fn = train_lib.DeepLabV3Plus
    return model_fn(num_classes=num_classes)


def _main(argv: list[str]) -> None:
    del argv
    try:
        parse_gin(_GIN_FILE.value, _GIN_BINDINGS.value)
        model = build_configured_model(_NUM_CLASSES.value)
    except UserInputError as error:
        raise app.UsageError(str(error)) from None
    stats = model_statistics(model, _HEIGHT.value, _WIDTH.value)
    print(
        f"{model.name}: {stats['parameters']:,} parameters ({stats['trainable_parameters']:,} trainable), "
        f"{stats['gflops_per_image']:.2f} GFLOPs per {_HEIGHT.value}x{_WIDTH.value} image"
    )


if __name__ == "__main__":
    app.run(_main)
