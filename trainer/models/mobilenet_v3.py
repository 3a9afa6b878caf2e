"""MobileNetV3 (Small, Large, minimalistic) backbone, layer for layer the Keras Applications model, made atrous."""

from typing import Any

import gin
import tensorflow as tf
import tf_keras as keras

from trainer.common import validate
from trainer.models.atrous import AtrousDepthwiseConv2D
from trainer.models.batch_norm import BatchNorm, BatchNormOwner, batch_norm_layer
from trainer.models.layers import require_bool, require_stride_or_dilation
from trainer.models.mobilenet_v2 import make_divisible
from trainer.models.output_stride import atrous_schedule, check_output_stride
from trainer.models.serialization import SERIALIZATION_PACKAGE

# Keras Applications' MobileNetV3 BN settings; the ImageNet checkpoints were trained with them.
BN_MOMENTUM = 0.999
BN_EPSILON = 1e-3
STEM_FILTERS = 16  # not scaled by the width multiplier, as in keras
SE_RATIO = 0.25
VALID_VARIANTS = ("small", "large")
# (kernel, expansion, output channels, stride, squeeze-excite, hard-swish) per block. A kernel of 5, squeeze-excite
# and hard-swish become 3, none and ReLU in the minimalistic models, as keras' `kernel`, `se_ratio`, `activation`.
BLOCK_SPECS = {
    "large": (
        (3, 1, 16, 1, False, False),
        (3, 4, 24, 2, False, False),
        (3, 3, 24, 1, False, False),
        (5, 3, 40, 2, True, False),
        (5, 3, 40, 1, True, False),
        (5, 3, 40, 1, True, False),
        (3, 6, 80, 2, False, True),
        (3, 2.5, 80, 1, False, True),
        (3, 2.3, 80, 1, False, True),
        (3, 2.3, 80, 1, False, True),
        (3, 6, 112, 1, True, True),
        (3, 6, 112, 1, True, True),
        (5, 6, 160, 2, True, True),
        (5, 6, 160, 1, True, True),
        (5, 6, 160, 1, True, True),
    ),
    "small": (
        (3, 1, 16, 2, True, False),
        (3, 72 / 16, 24, 2, False, False),
        (3, 88 / 24, 24, 1, False, False),
        (5, 4, 40, 2, True, True),
        (5, 6, 40, 1, True, True),
        (5, 6, 40, 1, True, True),
        (5, 3, 48, 1, True, True),
        (5, 3, 48, 1, True, True),
        (5, 6, 96, 2, True, True),
        (5, 6, 96, 1, True, True),
        (5, 6, 96, 1, True, True),
    ),
}
# Index of the last block at stride 4: the decoder's low-level features.
LOW_LEVEL_BLOCK = {"large": 2, "small": 0}
# Our sublayer name → keras' suffix after the block's prefix (`expanded_conv_3/`).
KERAS_SUFFIXES = {
    "expand": "expand",
    "expand_bn": "expand/BatchNorm",
    "depthwise": "depthwise",
    "depthwise_bn": "depthwise/BatchNorm",
    "se_reduce": "squeeze_excite/Conv",
    "se_expand": "squeeze_excite/Conv_1",
    "project": "project",
    "project_bn": "project/BatchNorm",
}


def hard_sigmoid(x: tf.Tensor) -> tf.Tensor:
    """ReLU6(x + 3) / 6, with keras' order of operations."""
    return tf.nn.relu6(x + 3.0) * (1.0 / 6.0)


def hard_swish(x: tf.Tensor) -> tf.Tensor:
    """x · hard_sigmoid(x)."""
    return x * hard_sigmoid(x)


def _activation(use_hard_swish: bool) -> Any:
    return hard_swish if use_hard_swish else tf.nn.relu


def _batch_norm(name: str) -> BatchNorm:
    return batch_norm_layer(name, momentum=BN_MOMENTUM, epsilon=BN_EPSILON)


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class MobileNetV3Block(BatchNormOwner, keras.layers.Layer):
    """Inverted residual: [1×1 expand →] k×k depthwise (strided / dilated) → [squeeze-excite →] 1×1 project."""

    def __init__(
        self,
        input_filters: int,
        output_filters: int,
        expansion: float = 1.0,
        kernel_size: int = 3,
        strides: int = 1,
        dilation_rate: int = 1,
        squeeze_excite: bool = False,
        use_hard_swish: bool = False,
        expand: bool = True,
        residual: bool = False,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        owner = f"{type(self).__name__}({self.name!r})"
        self.input_filters = validate.positive_int(f"{owner}.input_filters", input_filters)
        self.output_filters = validate.positive_int(f"{owner}.output_filters", output_filters)
        self.expansion = float(validate.positive_number(f"{owner}.expansion", expansion))
        self.kernel_size = validate.positive_int(f"{owner}.kernel_size", kernel_size)
        self.strides, self.dilation_rate = require_stride_or_dilation(owner, strides, dilation_rate)
        self.squeeze_excite, self.use_hard_swish = bool(squeeze_excite), bool(use_hard_swish)
        self.residual, self.has_expand = bool(residual), bool(expand)
        filters = make_divisible(input_filters * self.expansion)
        self.expand = keras.layers.Conv2D(filters, 1, use_bias=False, name="expand") if expand else None
        self.expand_bn = _batch_norm("expand_bn") if expand else None
        # 'same' equals keras' ZeroPadding2D(correct_pad) + 'valid' at stride 2 for odd kernels and any size.
        self.depthwise = AtrousDepthwiseConv2D(
            kernel_size, strides=strides, dilation_rate=dilation_rate, padding="same", use_bias=False, name="depthwise"
        )
        self.depthwise_bn = _batch_norm("depthwise_bn")
        if self.squeeze_excite:
            self.se_reduce = keras.layers.Conv2D(make_divisible(filters * SE_RATIO), 1, name="se_reduce")
            self.se_expand = keras.layers.Conv2D(filters, 1, name="se_expand")
        else:
            self.se_reduce = self.se_expand = None
        self.project = keras.layers.Conv2D(output_filters, 1, use_bias=False, name="project")
        self.project_bn = _batch_norm("project_bn")

    def call(self, inputs: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        """Returns the linear projection, plus `inputs` when the block is residual."""
        activation = _activation(self.use_hard_swish)
        x = inputs
        if self.expand is not None:
            x = activation(self.expand_bn(self.expand(x), training=training))
        x = activation(self.depthwise_bn(self.depthwise(x), training=training))
        if self.se_reduce is not None:
            scale = tf.nn.relu(self.se_reduce(tf.reduce_mean(x, axis=(1, 2), keepdims=True)))
            x = x * hard_sigmoid(self.se_expand(scale))
        x = self.project_bn(self.project(x), training=training)
        return inputs + x if self.residual else x

    def weighted_layers(self) -> dict[str, keras.layers.Layer]:
        """{keras suffix: sublayer} for every sublayer with weights."""
        return {
            suffix: getattr(self, attribute)
            for attribute, suffix in KERAS_SUFFIXES.items()
            if getattr(self, attribute) is not None
        }

    def get_config(self) -> dict[str, Any]:
        """Returns the constructor arguments."""
        config = super().get_config()
        config.update(
            {
                "input_filters": self.input_filters,
                "output_filters": self.output_filters,
                "expansion": self.expansion,
                "kernel_size": self.kernel_size,
                "strides": self.strides,
                "dilation_rate": self.dilation_rate,
                "squeeze_excite": self.squeeze_excite,
                "use_hard_swish": self.use_hard_swish,
                "expand": self.has_expand,
                "residual": self.residual,
            }
        )
        return config


@gin.configurable
@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class MobileNetV3(BatchNormOwner, keras.Model):
    """MobileNetV3 backbone returning stride-4 low-level and `output_stride` high-level features.

    Weights are the same, layer for layer, as `keras.applications.MobileNetV3Small/Large(include_top=False,
    alpha=width_multiplier, minimalistic=...)`, whose layer names `keras_application_layers()` maps to ours.
    The pipeline's [-1, 1] images are what keras' built-in Rescaling produces, so no preprocessing is needed.
    Once the stride reaches `output_stride`, later depthwise convs dilate instead (see `atrous_schedule`).
    The high-level features are keras' output: the 1×1 `Conv_1` (6× the last block's width) and its activation.
    """

    def __init__(
        self,
        variant: str = "large",
        output_stride: int = 16,
        width_multiplier: float = 1.0,
        minimalistic: bool = False,
        name: str = "mobilenet_v3",
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        owner = type(self).__name__
        self.variant = validate.choice(f"{owner}.variant", variant, VALID_VARIANTS)
        self.output_stride = check_output_stride(owner, output_stride)
        self.width_multiplier = float(validate.positive_number(f"{owner}.width_multiplier", width_multiplier))
        self.minimalistic = require_bool(f"{owner}.minimalistic", minimalistic)
        self.stem_conv = keras.layers.Conv2D(STEM_FILTERS, 3, strides=2, padding="same", use_bias=False, name="Conv")
        self.stem_bn = _batch_norm("Conv_bn")
        self.blocks = self._blocks()
        self.final_conv = keras.layers.Conv2D(
            make_divisible(self.blocks[-1].output_filters * 6), 1, use_bias=False, name="Conv_1"
        )
        self.final_bn = _batch_norm("Conv_1_bn")

    def _blocks(self) -> list[MobileNetV3Block]:
        specs = BLOCK_SPECS[self.variant]
        schedule = atrous_schedule([spec[3] for spec in specs], self.output_stride, input_stride=2)
        blocks, input_filters = [], STEM_FILTERS
        for index, ((kernel, expansion, filters, stride, se, hswish), (layer_stride, rate)) in enumerate(
            zip(specs, schedule, strict=True)
        ):
            output_filters = make_divisible(filters * self.width_multiplier)
            blocks.append(
                MobileNetV3Block(
                    input_filters,
                    output_filters,
                    expansion=expansion,
                    kernel_size=3 if self.minimalistic else kernel,
                    strides=layer_stride,
                    dilation_rate=rate,
                    squeeze_excite=se and not self.minimalistic,
                    use_hard_swish=hswish and not self.minimalistic,
                    expand=index > 0,  # keras' first block has no expand conv, whatever its expansion
                    # Keras' rule on the *original* stride, so the atrous model keeps the same graph.
                    residual=stride == 1 and input_filters == output_filters,
                    name=f"expanded_conv_{index}" if index else "expanded_conv",
                )
            )
            input_filters = output_filters
        return blocks

    def call(self, images: tf.Tensor, training: bool | None = None) -> dict[str, tf.Tensor]:
        """Returns {"low_level": stride-4 block output, "high_level": Conv_1 features (output_stride)}."""
        activation = _activation(not self.minimalistic)
        x = activation(self.stem_bn(self.stem_conv(tf.cast(images, self.compute_dtype)), training=training))
        low_level = None
        for index, block in enumerate(self.blocks):
            x = block(x, training=training)
            if index == LOW_LEVEL_BLOCK[self.variant]:
                low_level = x
        x = activation(self.final_bn(self.final_conv(x), training=training))
        return {"low_level": low_level, "high_level": x}

    def keras_application_layers(self) -> dict[str, keras.layers.Layer]:
        """{Keras Applications MobileNetV3 layer name: our layer} for every layer that has weights."""
        layers = {"Conv": self.stem_conv, "Conv/BatchNorm": self.stem_bn}
        for block in self.blocks:
            for suffix, layer in block.weighted_layers().items():
                layers[f"{block.name}/{suffix}"] = layer
        layers.update({"Conv_1": self.final_conv, "Conv_1/BatchNorm": self.final_bn})
        return layers

    def get_config(self) -> dict[str, Any]:
        """Returns the constructor arguments."""
        return {
            **super().get_config(),
            "name": self.name,
            "trainable": self.trainable,
            "variant": self.variant,
            "output_stride": self.output_stride,
            "width_multiplier": self.width_multiplier,
            "minimalistic": self.minimalistic,
        }
