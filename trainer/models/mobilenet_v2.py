"""MobileNetV2 backbone, layer for layer the Keras Applications model, with atrous blocks for dense prediction."""

from typing import Any

import gin
import tensorflow as tf
import tf_keras as keras

from trainer.common import validate
from trainer.common.errors import UserInputError, expected
from trainer.models.atrous import AtrousDepthwiseConv2D
from trainer.models.batch_norm import BatchNorm, BatchNormOwner, batch_norm_layer
from trainer.models.layers import require_stride_or_dilation
from trainer.models.serialization import SERIALIZATION_PACKAGE

VALID_OUTPUT_STRIDES = (8, 16, 32)
# Keras Applications' MobileNetV2 BN settings; the ImageNet checkpoints were trained with them.
BN_MOMENTUM = 0.999
BN_EPSILON = 1e-3
STEM_FILTERS = 32
FINAL_FILTERS = 1280
# (expansion t, output channels c, repeats n, first stride s) of the inverted residual stages.
BLOCK_SPECS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
# Index of the last block at stride 4 (keras' `block_2_add`): the decoder's low-level features.
LOW_LEVEL_BLOCK = 2


def _batch_norm(name: str) -> BatchNorm:
    """A BN layer with Keras Applications' MobileNetV2 defaults."""
    return batch_norm_layer(name, momentum=BN_MOMENTUM, epsilon=BN_EPSILON)


def make_divisible(value: float, divisor: int = 8) -> int:
    """Rounds `value` to the nearest multiple of `divisor` (at least `divisor`), never more than 10% below it."""
    # Same rounding as keras.applications.mobilenet_v2._make_divisible, so widths match the checkpoints.
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class InvertedResidualBlock(BatchNormOwner, keras.layers.Layer):
    """MobileNetV2 block: 1×1 expand → ReLU6 → 3×3 depthwise (strided / dilated) → ReLU6 → 1×1 linear project.

    Sublayers carry the Keras Applications suffixes (`expand`, `expand_BN`, `depthwise`, ...), so keras'
    layer name is `f"{block.name}_{sublayer.name}"` for blocks named like keras' (`expanded_conv`, `block_1`).
    """

    def __init__(
        self,
        input_filters: int,
        output_filters: int,
        expansion: int = 6,
        strides: int = 1,
        dilation_rate: int = 1,
        residual: bool = False,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        owner = f"{type(self).__name__}({self.name!r})"
        self.input_filters = validate.positive_int(f"{owner}.input_filters", input_filters)
        self.output_filters = validate.positive_int(f"{owner}.output_filters", output_filters)
        self.expansion = validate.positive_int(f"{owner}.expansion", expansion)
        self.strides, self.dilation_rate = require_stride_or_dilation(owner, strides, dilation_rate)
        self.residual = bool(residual)
        if self.residual and (strides != 1 or input_filters != output_filters):
            raise UserInputError(
                f"{owner}: expected strides == 1 and input_filters == output_filters for a "
                f"residual block, received strides={strides}, input_filters={input_filters}, "
                f"output_filters={output_filters}"
            )
        # Keras' first block (expansion 1) has no expand conv at all, not an identity one: no weights there.
        if self.expansion > 1:
            self.expand = keras.layers.Conv2D(
                self.expansion * input_filters, 1, padding="same", use_bias=False, name="expand"
            )
            self.expand_bn = _batch_norm("expand_BN")
        else:
            self.expand = None
            self.expand_bn = None
        # Keras pads a stride-2 depthwise conv with ZeroPadding2D(correct_pad) + 'valid'. For a 3×3 kernel at
        # stride 2 that is exactly TF's 'same' padding for both even (0, 1) and odd (1, 1) sizes, and 'same'
        # also stays right when the spatial size is only known at run time.
        self.depthwise = AtrousDepthwiseConv2D(
            3, strides=strides, dilation_rate=dilation_rate, padding="same", use_bias=False, name="depthwise"
        )
        self.depthwise_bn = _batch_norm("depthwise_BN")
        self.project = keras.layers.Conv2D(output_filters, 1, padding="same", use_bias=False, name="project")
        self.project_bn = _batch_norm("project_BN")

    def call(self, inputs: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        """Returns the linear projection, plus `inputs` when the block is residual."""
        x = inputs
        if self.expand is not None:
            x = tf.nn.relu6(self.expand_bn(self.expand(x), training=training))
        x = tf.nn.relu6(self.depthwise_bn(self.depthwise(x), training=training))
        x = self.project_bn(self.project(x), training=training)
        return inputs + x if self.residual else x

    def weighted_layers(self) -> dict[str, keras.layers.Layer]:
        """{sublayer name: sublayer} for every sublayer with weights, in keras' order."""
        candidates = [self.expand, self.expand_bn, self.depthwise, self.depthwise_bn, self.project, self.project_bn]
        return {layer.name: layer for layer in candidates if layer is not None}

    def get_config(self) -> dict[str, Any]:
        """Returns the constructor arguments."""
        config = super().get_config()
        config.update(
            {
                "input_filters": self.input_filters,
                "output_filters": self.output_filters,
                "expansion": self.expansion,
                "strides": self.strides,
                "dilation_rate": self.dilation_rate,
                "residual": self.residual,
            }
        )
        return config


@gin.configurable
@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class MobileNetV2(BatchNormOwner, keras.Model):
    """MobileNetV2 backbone returning stride-4 low-level and `output_stride` high-level features.

    Weights are the same, layer for layer, as `keras.applications.MobileNetV2(include_top=False,
    alpha=width_multiplier)`; `keras_application_layers()` maps keras' layer names to ours for loading its
    ImageNet checkpoints. Once the accumulated stride reaches `output_stride`, later blocks keep stride 1 and
    dilate their depthwise conv instead, as DeepLab's slim MobileNetV2 does: the block whose stride is dropped
    keeps the current rate (its taps still see adjacent pixels) and the blocks after it multiply the rate by
    the dropped stride. `include_final_conv=False` drops the 1×1 1280-channel conv, as DeepLab does, and
    returns the last block's (linear) projection.
    """

    def __init__(
        self,
        output_stride: int = 16,
        width_multiplier: float = 1.0,
        include_final_conv: bool = True,
        name: str = "mobilenet_v2",
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        owner = type(self).__name__
        if output_stride not in VALID_OUTPUT_STRIDES:
            raise UserInputError(
                f"{owner}: expected `output_stride` in {VALID_OUTPUT_STRIDES}, received {output_stride!r}"
            )
        self.output_stride = output_stride
        self.width_multiplier = float(validate.positive_number(f"{owner}.width_multiplier", width_multiplier))
        if not isinstance(include_final_conv, bool):
            # bool("false") is True: a string from a hand-written config must not silently switch the conv on.
            raise expected(f"{owner}.include_final_conv", "True or False", include_final_conv)
        self.include_final_conv = include_final_conv

        alpha = self.width_multiplier
        self.stem_conv = keras.layers.Conv2D(
            make_divisible(STEM_FILTERS * alpha), 3, strides=2, padding="same", use_bias=False, name="Conv1"
        )
        self.stem_bn = _batch_norm("bn_Conv1")
        self.blocks = self._blocks()
        if self.include_final_conv:
            # Keras widens the final conv only for multipliers above 1; thinner models keep 1280 channels.
            final_filters = make_divisible(FINAL_FILTERS * alpha) if alpha > 1.0 else FINAL_FILTERS
            self.final_conv = keras.layers.Conv2D(final_filters, 1, use_bias=False, name="Conv_1")
            self.final_bn = _batch_norm("Conv_1_bn")
        else:
            self.final_conv = None
            self.final_bn = None

    def _blocks(self) -> list[InvertedResidualBlock]:
        """The inverted residual blocks of `BLOCK_SPECS`, atrous once the stride reaches `output_stride`."""
        alpha = self.width_multiplier
        blocks = []
        input_filters = make_divisible(STEM_FILTERS * alpha)
        current_stride, rate = 2, 1  # the stem already halves the resolution
        for expansion, filters, repeats, first_stride in BLOCK_SPECS:
            # int() before rounding, as keras does: it changes the width for some multipliers (e.g. 0.35).
            output_filters = make_divisible(int(filters * alpha))
            for index in range(repeats):
                stride = first_stride if index == 0 else 1
                if current_stride == self.output_stride:
                    layer_stride, layer_rate = 1, rate
                    rate *= stride
                else:
                    layer_stride, layer_rate = stride, 1
                    current_stride *= stride
                block_id = len(blocks)
                blocks.append(
                    InvertedResidualBlock(
                        input_filters,
                        output_filters,
                        expansion=expansion,
                        strides=layer_stride,
                        dilation_rate=layer_rate,
                        # Keras' rule on the *original* stride, so the atrous model keeps the same graph.
                        residual=stride == 1 and input_filters == output_filters,
                        name=f"block_{block_id}" if block_id else "expanded_conv",
                    )
                )
                input_filters = output_filters
        return blocks

    def call(self, images: tf.Tensor, training: bool | None = None) -> dict[str, tf.Tensor]:
        """Returns {"low_level": block-2 output (stride 4), "high_level": final features (output_stride)}."""
        x = self.stem_conv(tf.cast(images, self.compute_dtype))
        x = tf.nn.relu6(self.stem_bn(x, training=training))
        low_level = None
        for block_id, block in enumerate(self.blocks):
            x = block(x, training=training)
            if block_id == LOW_LEVEL_BLOCK:
                low_level = x
        if self.final_conv is not None:
            x = tf.nn.relu6(self.final_bn(self.final_conv(x), training=training))
        return {"low_level": low_level, "high_level": x}

    def keras_application_layers(self) -> dict[str, keras.layers.Layer]:
        """{Keras Applications MobileNetV2 layer name: our layer} for every layer that has weights.

        Copying `keras_model.get_layer(name).get_weights()` into each value loads keras' ImageNet weights.
        """
        layers = {self.stem_conv.name: self.stem_conv, self.stem_bn.name: self.stem_bn}
        for block in self.blocks:
            for suffix, layer in block.weighted_layers().items():
                layers[f"{block.name}_{suffix}"] = layer
        if self.final_conv is not None:
            layers[self.final_conv.name] = self.final_conv
            layers[self.final_bn.name] = self.final_bn
        return layers

    def get_config(self) -> dict[str, Any]:
        """Returns the constructor arguments."""
        return {
            **super().get_config(),
            "name": self.name,
            "trainable": self.trainable,
            "output_stride": self.output_stride,
            "width_multiplier": self.width_multiplier,
            "include_final_conv": self.include_final_conv,
        }
