"""EfficientNetV2 (B0-B3, S, M) backbone, layer for layer the Keras Applications model, made atrous."""

import math
from typing import Any

import gin
import tensorflow as tf
import tf_keras as keras

from trainer.common import validate
from trainer.common.images import to_pixel_range
from trainer.models.atrous import AtrousConv2D, AtrousDepthwiseConv2D
from trainer.models.batch_norm import BatchNorm, BatchNormOwner, batch_norm_layer
from trainer.models.dropout import ResumableDropout
from trainer.models.layers import require_bool, require_drop_rate, require_stride_or_dilation
from trainer.models.output_stride import atrous_schedule, check_output_stride
from trainer.models.serialization import SERIALIZATION_PACKAGE

# Keras Applications' EfficientNetV2 BN momentum (epsilon is keras' 1e-3); the ImageNet weights used them.
BN_MOMENTUM = 0.9
TOP_FILTERS = 1280
# (kernel, repeats, input channels, output channels, expansion, squeeze-excite ratio, stride, fused) per stage.
_B_STAGES = (
    (3, 1, 32, 16, 1, 0.0, 1, True),
    (3, 2, 16, 32, 4, 0.0, 2, True),
    (3, 2, 32, 48, 4, 0.0, 2, True),
    (3, 3, 48, 96, 4, 0.25, 2, False),
    (3, 5, 96, 112, 6, 0.25, 1, False),
    (3, 8, 112, 192, 6, 0.25, 2, False),
)
STAGES = {
    "b": _B_STAGES,
    "s": (
        (3, 2, 24, 24, 1, 0.0, 1, True),
        (3, 4, 24, 48, 4, 0.0, 2, True),
        (3, 4, 48, 64, 4, 0.0, 2, True),
        (3, 6, 64, 128, 4, 0.25, 2, False),
        (3, 9, 128, 160, 6, 0.25, 1, False),
        (3, 15, 160, 256, 6, 0.25, 2, False),
    ),
    "m": (
        (3, 3, 24, 24, 1, 0.0, 1, True),
        (3, 5, 24, 48, 4, 0.0, 2, True),
        (3, 5, 48, 80, 4, 0.0, 2, True),
        (3, 7, 80, 160, 4, 0.25, 2, False),
        (3, 14, 160, 176, 6, 0.25, 1, False),
        (3, 18, 176, 304, 6, 0.25, 2, False),
        (3, 5, 304, 512, 6, 0.25, 1, False),
    ),
}
# variant: (width coefficient, depth coefficient, stage table), as keras' EfficientNetV2B0 ... EfficientNetV2M.
VARIANTS = {
    "b0": (1.0, 1.0, "b"),
    "b1": (1.0, 1.1, "b"),
    "b2": (1.1, 1.2, "b"),
    "b3": (1.2, 1.4, "b"),
    "s": (1.0, 1.0, "s"),
    "m": (1.0, 1.0, "m"),
}
# What the ImageNet weights expect, from 0-255 pixels: B models ImageNet mean/std on [0, 1], S and M x / 128 - 1.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LOW_LEVEL_STAGE = 1  # the second stage ends at stride 4


def round_filters(filters: float, width_coefficient: float, divisor: int = 8) -> int:
    """Keras' EfficientNetV2 channel rounding: to the nearest multiple of `divisor`, at least `divisor`."""
    return int(max(divisor, int(filters * width_coefficient + divisor / 2) // divisor * divisor))


def _batch_norm(name: str) -> BatchNorm:
    return batch_norm_layer(name, momentum=BN_MOMENTUM)


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class EfficientNetV2Block(BatchNormOwner, keras.layers.Layer):
    """MBConv (1×1 expand → k×k depthwise) or fused MBConv (k×k expand), then squeeze-excite and 1×1 project.

    Sublayers carry keras' suffixes (`expand_conv`, `dwconv2`, `bn`, `se_reduce`, `project_bn`, ...), so keras'
    layer name is `f"{block.name}_{sublayer.name}"` for blocks named like keras' (`block1a`, `block4c`).
    """

    def __init__(
        self,
        input_filters: int,
        output_filters: int,
        expand_ratio: int = 1,
        kernel_size: int = 3,
        strides: int = 1,
        dilation_rate: int = 1,
        se_ratio: float = 0.0,
        fused: bool = False,
        residual: bool = False,
        drop_rate: float = 0.0,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        owner = f"{type(self).__name__}({self.name!r})"
        self.input_filters = validate.positive_int(f"{owner}.input_filters", input_filters)
        self.output_filters = validate.positive_int(f"{owner}.output_filters", output_filters)
        self.expand_ratio = validate.positive_int(f"{owner}.expand_ratio", expand_ratio)
        self.kernel_size = validate.positive_int(f"{owner}.kernel_size", kernel_size)
        self.strides, self.dilation_rate = require_stride_or_dilation(owner, strides, dilation_rate)
        self.se_ratio = float(se_ratio)
        self.fused, self.residual, self.drop_rate = bool(fused), bool(residual), float(drop_rate)
        filters = input_filters * expand_ratio
        spatial = {"strides": strides, "dilation_rate": dilation_rate, "padding": "same", "use_bias": False}
        self.expand_conv = self.expand_bn = self.dwconv2 = self.bn = None
        if expand_ratio != 1:
            kernel = kernel_size if fused else 1
            self.expand_conv = AtrousConv2D(
                filters, kernel, name="expand_conv", **(spatial if fused else {"use_bias": False})
            )
            self.expand_bn = _batch_norm("expand_bn")
        if not fused:
            self.dwconv2 = AtrousDepthwiseConv2D(kernel_size, name="dwconv2", **spatial)
            self.bn = _batch_norm("bn")
        self.se_reduce = self.se_expand = None
        if 0 < self.se_ratio <= 1:
            self.se_reduce = keras.layers.Conv2D(max(1, int(input_filters * se_ratio)), 1, name="se_reduce")
            self.se_expand = keras.layers.Conv2D(filters, 1, name="se_expand")
        # A fused block without expansion projects with its k×k (strided) conv, then activates.
        project_spatial = fused and expand_ratio == 1
        self.project_conv = AtrousConv2D(
            output_filters,
            kernel_size if project_spatial else 1,
            name="project_conv",
            **(spatial if project_spatial else {"use_bias": False}),
        )
        self.project_bn = _batch_norm("project_bn")
        self.drop = ResumableDropout(self.drop_rate, per_example=True, name="drop") if residual else None

    def call(self, inputs: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        """Returns the block's projection, plus `inputs` (after stochastic depth) when residual."""
        x = inputs
        if self.expand_conv is not None:
            x = tf.nn.silu(self.expand_bn(self.expand_conv(x), training=training))
        if self.dwconv2 is not None:
            x = tf.nn.silu(self.bn(self.dwconv2(x), training=training))
        if self.se_reduce is not None:
            scale = tf.nn.silu(self.se_reduce(tf.reduce_mean(x, axis=(1, 2), keepdims=True)))
            x = x * tf.sigmoid(self.se_expand(scale))
        x = self.project_bn(self.project_conv(x), training=training)
        if self.fused and self.expand_ratio == 1:
            x = tf.nn.silu(x)
        if self.drop is None:
            return x
        return self.drop(x, training=training) + inputs

    def weighted_layers(self) -> dict[str, keras.layers.Layer]:
        """{sublayer name: sublayer} for every sublayer with weights."""
        candidates = [self.expand_conv, self.expand_bn, self.dwconv2, self.bn, self.se_reduce, self.se_expand]
        return {layer.name: layer for layer in [*candidates, self.project_conv, self.project_bn] if layer is not None}

    def get_config(self) -> dict[str, Any]:
        """Returns the constructor arguments."""
        config = super().get_config()
        config.update(
            {
                "input_filters": self.input_filters,
                "output_filters": self.output_filters,
                "expand_ratio": self.expand_ratio,
                "kernel_size": self.kernel_size,
                "strides": self.strides,
                "dilation_rate": self.dilation_rate,
                "se_ratio": self.se_ratio,
                "fused": self.fused,
                "residual": self.residual,
                "drop_rate": self.drop_rate,
            }
        )
        return config


@gin.configurable
@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class EfficientNetV2(BatchNormOwner, keras.Model):
    """EfficientNetV2 backbone returning stride-4 low-level and `output_stride` high-level features.

    Weights are the same, layer for layer, as `keras.applications.EfficientNetV2<variant>(include_top=False)`;
    `keras_application_layers()` maps keras' layer names to ours. With `preprocessing` (keras' default) the
    pipeline's [-1, 1] images are converted to what the ImageNet weights expect: the ImageNet mean and standard
    deviation for B0-B3, pixels / 128 - 1 for S and M. `width_coefficient` / `depth_coefficient` override the
    variant's (thin test models). Stochastic depth drops residual branches with keras' linearly increasing rates
    up to `drop_connect_rate`. Once the stride reaches `output_stride`, later blocks dilate instead.
    """

    def __init__(
        self,
        variant: str = "s",
        output_stride: int = 16,
        preprocessing: bool = True,
        drop_connect_rate: float = 0.2,
        width_coefficient: float | None = None,
        depth_coefficient: float | None = None,
        name: str = "efficientnet_v2",
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        owner = type(self).__name__
        self.variant = validate.choice(f"{owner}.variant", variant, tuple(VARIANTS))
        self.output_stride = check_output_stride(owner, output_stride)
        self.preprocessing = require_bool(f"{owner}.preprocessing", preprocessing)
        self.drop_connect_rate = require_drop_rate(f"{owner}.drop_connect_rate", drop_connect_rate)
        width, depth, table = VARIANTS[self.variant]
        width = width if width_coefficient is None else width_coefficient
        depth = depth if depth_coefficient is None else depth_coefficient
        self.width_coefficient = float(validate.positive_number(f"{owner}.width_coefficient", width))
        self.depth_coefficient = float(validate.positive_number(f"{owner}.depth_coefficient", depth))
        stages = STAGES[table]
        self.stem_conv = keras.layers.Conv2D(
            round_filters(stages[0][2], self.width_coefficient),
            3,
            strides=2,
            padding="same",
            use_bias=False,
            name="stem_conv",
        )
        self.stem_bn = _batch_norm("stem_bn")
        self.blocks, self.low_level_block = self._blocks(stages)
        self.top_conv = keras.layers.Conv2D(
            round_filters(TOP_FILTERS, self.width_coefficient), 1, use_bias=False, name="top_conv"
        )
        self.top_bn = _batch_norm("top_bn")

    def _blocks(self, stages: tuple) -> tuple[list[EfficientNetV2Block], int]:
        """The blocks of every stage, named like keras' (`block3b`), and the index of the last stride-4 one."""
        specs = []
        for stage, (kernel, repeats, input_filters, output_filters, expansion, se, stride, fused) in enumerate(stages):
            input_filters = round_filters(input_filters, self.width_coefficient)
            output_filters = round_filters(output_filters, self.width_coefficient)
            for index in range(int(math.ceil(self.depth_coefficient * repeats))):
                block_input = input_filters if index == 0 else output_filters
                block_stride = stride if index == 0 else 1
                specs.append((stage, index, kernel, block_input, output_filters, expansion, se, block_stride, fused))
        schedule = atrous_schedule([spec[7] for spec in specs], self.output_stride, input_stride=2)
        blocks, low_level_block = [], 0
        for number, (spec, (layer_stride, rate)) in enumerate(zip(specs, schedule, strict=True)):
            stage, index, kernel, block_input, block_output, expansion, se, stride, fused = spec
            residual = stride == 1 and block_input == block_output  # keras' rule on the original stride
            blocks.append(
                EfficientNetV2Block(
                    block_input,
                    block_output,
                    expand_ratio=expansion,
                    kernel_size=kernel,
                    strides=layer_stride,
                    dilation_rate=rate,
                    se_ratio=se,
                    fused=fused,
                    residual=residual,
                    drop_rate=self.drop_connect_rate * number / len(specs),
                    name=f"block{stage + 1}{chr(index + 97)}",
                )
            )
            if stage == LOW_LEVEL_STAGE:
                low_level_block = number
        return blocks, low_level_block

    def preprocess(self, images: tf.Tensor) -> tf.Tensor:
        """[-1, 1] images → the input convention of the variant's ImageNet weights (float32)."""
        pixels = to_pixel_range(images)
        if VARIANTS[self.variant][2] == "b":
            mean = tf.constant(IMAGENET_MEAN, tf.float32)
            return (pixels / 255.0 - mean) / tf.constant(IMAGENET_STD, tf.float32)
        return pixels / 128.0 - 1.0

    def call(self, images: tf.Tensor, training: bool | None = None) -> dict[str, tf.Tensor]:
        """Returns {"low_level": stage-2 output (stride 4), "high_level": top conv features (output_stride)}."""
        x = self.preprocess(images) if self.preprocessing else images
        x = tf.nn.silu(self.stem_bn(self.stem_conv(tf.cast(x, self.compute_dtype)), training=training))
        low_level = None
        for number, block in enumerate(self.blocks):
            x = block(x, training=training)
            if number == self.low_level_block:
                low_level = x
        x = tf.nn.silu(self.top_bn(self.top_conv(x), training=training))
        return {"low_level": low_level, "high_level": x}

    def keras_application_layers(self) -> dict[str, keras.layers.Layer]:
        """{Keras Applications EfficientNetV2 layer name: our layer} for every layer that has weights."""
        layers = {"stem_conv": self.stem_conv, "stem_bn": self.stem_bn}
        for block in self.blocks:
            for suffix, layer in block.weighted_layers().items():
                layers[f"{block.name}_{suffix}"] = layer
        layers.update({"top_conv": self.top_conv, "top_bn": self.top_bn})
        return layers

    def get_config(self) -> dict[str, Any]:
        """Returns the constructor arguments."""
        return {
            **super().get_config(),
            "name": self.name,
            "trainable": self.trainable,
            "variant": self.variant,
            "output_stride": self.output_stride,
            "preprocessing": self.preprocessing,
            "drop_connect_rate": self.drop_connect_rate,
            "width_coefficient": self.width_coefficient,
            "depth_coefficient": self.depth_coefficient,
        }
