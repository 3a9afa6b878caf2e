"""Prints a model's parameter count and GFLOPs per image for a gin config and an input size.

  python -m trainer.tools.model_stats --gin_file=configs/pascal_voc_resnet101_os16.gin --height=513 --width=513

FLOPs are TensorFlow's profiler count for one image in inference mode (2 per multiply-add; a dilated 3×3 conv
counts as a 3×3 conv; batch norm, activations and resizes are included, so it is a little above the bare
conv/matmul count).
"""

import gin
import tensorflow as tf
import tf_keras as keras
from absl import app, flags
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from trainer import train_lib
from trainer.config import ConfigError, parse_gin

_GIN_FILE = flags.DEFINE_multi_string("gin_file", [], "Gin config file(s).")
_GIN_BINDINGS = flags.DEFINE_multi_string("gin_bindings", [], "Gin bindings applied after the files.")
_HEIGHT = flags.DEFINE_integer("height", 513, "Input height in pixels.")
_WIDTH = flags.DEFINE_integer("width", 513, "Input width in pixels.")
_NUM_CLASSES = flags.DEFINE_integer("num_classes", 21, "Number of classes of the classifier.")


def model_statistics(model: keras.Model, height: int, width: int) -> dict[str, float]:
    """Returns {"parameters", "trainable_parameters", "gflops_per_image"} of `model` on a height×width input."""
    forward = tf.function(lambda images: model(images, training=False))
    concrete = forward.get_concrete_function(tf.TensorSpec([1, height, width, 3], tf.float32))
    graph = convert_variables_to_constants_v2(concrete).graph
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    profile = tf.compat.v1.profiler.profile(graph=graph, run_meta=tf.compat.v1.RunMetadata(), cmd="op", options=options)
    return {
        "parameters": model.count_params(),
        "trainable_parameters": int(sum(tf.size(v).numpy() for v in model.trainable_variables)),
        "gflops_per_image": profile.total_float_ops / 1e9,
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
    except ConfigError as error:
        raise app.UsageError(str(error)) from None
    stats = model_statistics(model, _HEIGHT.value, _WIDTH.value)
    print(
        f"{model.name}: {stats['parameters']:,} parameters ({stats['trainable_parameters']:,} trainable), "
        f"{stats['gflops_per_image']:.2f} GFLOPs per {_HEIGHT.value}x{_WIDTH.value} image"
    )


if __name__ == "__main__":
    app.run(_main)
