"""Aligned Xception-65 backbone of DeepLabV3+: strided separable convs instead of max pooling, atrous tail."""

import math
from collections.abc import Sequence
from typing import Any

import gin
import tensorflow as tf
import tf_keras as keras

from trainer.common import validate
from trainer.common.errors import UserInputError, expected
from trainer.models.batch_norm import BatchNormOwner
from trainer.models.layers import ConvBNReLU
from trainer.models.separable import SeparableConvBNReLU
from trainer.models.serialization import SERIALIZATION_PACKAGE

VALID_OUTPUT_STRIDES = (8, 16, 32)
# How an Xception block adds its input back: a strided 1×1 conv + BN, the input itself, or not at all.
VALID_SKIPS = ("conv", "sum", "none")
MIN_CHANNELS = 8

# (name, depths, skip, stride) of the Xception-65 blocks around the middle flow, as in deeplab's xception_65.
_ENTRY_BLOCKS = (
    ("entry_block1", (128, 128, 128), "conv", 2),
    ("entry_block2", (256, 256, 256), "conv", 2),
    ("entry_block3", (728, 728, 728), "conv", 2),
)
_MIDDLE_DEPTHS = (728, 728, 728)
_EXIT_BLOCKS = (
    ("exit_block1", (728, 1024, 1024), "conv", 2),
    ("exit_block2", (1536, 1536, 2048), "none", 1),
)
_STEM_STRIDE = 2


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class XceptionBlock(BatchNormOwner, keras.layers.Layer):
    """Three separable 3×3 convs (the last one strided) plus a `skip` connection: 'conv', 'sum' or 'none'.

    The residual sum has no ReLU after it: every separable conv already ends in one (DeepLab's xception_module).
    """

    def __init__(
        self,
        depths: Sequence[int],
        skip: str = "conv",
        strides: int = 1,
        dilation_rate: int = 1,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        owner = f"{type(self).__name__}({self.name!r})"
        self.depths = validate.positive_ints(f"{owner}.depths", depths)
        if len(self.depths) != 3:
            raise expected(f"{owner}.depths", "3 entries (one per separable conv)", depths)
        self.skip = validate.choice(f"{owner}.skip", skip, VALID_SKIPS)
        self.strides = validate.positive_int(f"{owner}.strides", strides)
        self.dilation_rate = validate.positive_int(f"{owner}.dilation_rate", dilation_rate)
        if skip == "sum" and strides > 1:
            raise UserInputError(
                f"{owner}: expected strides == 1 with skip='sum' (an identity cannot downsample), "
                f"received strides={strides}"
            )
        self.separable_convs = [
            SeparableConvBNReLU(
                depth,
                strides=strides if index == 2 else 1,
                dilation_rate=dilation_rate,
                name=f"separable_conv{index + 1}",
            )
            for index, depth in enumerate(self.depths)
        ]
        self.shortcut = (
            ConvBNReLU(self.depths[-1], 1, strides=strides, activation=False, name="shortcut")
            if skip == "conv"
            else None
        )

    def call(
        self, inputs: tf.Tensor, training: bool | None = None, return_hidden: bool = False
    ) -> tf.Tensor | tuple[tf.Tensor, tf.Tensor]:
        """Returns the block output, and with `return_hidden` also the second separable conv's output.

        The second conv's output is the last feature map before the block's stride, which DeepLab taps as its
        stride-4 low-level features in entry block 2.
        """
        x = self.separable_convs[0](inputs, training=training)
        hidden = self.separable_convs[1](x, training=training)
        residual = self.separable_convs[2](hidden, training=training)
        if self.skip == "conv":
            outputs = residual + self.shortcut(inputs, training=training)
        elif self.skip == "sum":
            outputs = residual + inputs
        else:
            outputs = residual
        return (outputs, hidden) if return_hidden else outputs

    def get_config(self) -> dict[str, Any]:
        """Returns the constructor arguments."""
        config = super().get_config()
        config.update(
            {
                "depths": self.depths,
                "skip": self.skip,
                "strides": self.strides,
                "dilation_rate": self.dilation_rate,
            }
        )
        return config


@gin.configurable
@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class Xception65(BatchNormOwner, keras.Model):
    """Aligned Xception-65 (DeepLabV3+) returning stride-4 low-level and `output_stride` high-level features.

    Entry flow: two conv-BN-ReLU (32 stride 2, 64) and three strided blocks (128, 256, 728); middle flow:
    `middle_flow_blocks` identity-skip blocks of 728; exit flow: a strided (728, 1024, 1024) block and a
    (1536, 1536, 2048) block without skip. As in DeepLab's `stack_blocks_dense`, once the running stride equals
    `output_stride` each block that would downsample runs with stride 1 at the current dilation, and every block
    after it dilates by that stride more: the strided conv's neighbours stay 1 apart at its input resolution,
    so the dense features equal the strided net's on its grid. `width_multiplier` scales every channel count.
    """

    def __init__(
        self,
        output_stride: int = 16,
        width_multiplier: float = 1.0,
        middle_flow_blocks: int = 16,
        name: str = "xception65",
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        owner = type(self).__name__
        if output_stride not in VALID_OUTPUT_STRIDES:
            raise UserInputError(
                f"{owner}: expected `output_stride` in {VALID_OUTPUT_STRIDES}, received {output_stride!r}"
            )
        self.output_stride = output_stride
        if (
            isinstance(width_multiplier, bool)
            or not isinstance(width_multiplier, int | float)
            or not math.isfinite(width_multiplier)
            or width_multiplier <= 0
        ):
            raise UserInputError(
                f"{owner}: expected `width_multiplier` to be a positive finite number, "
                f"received {width_multiplier!r} (of type {type(width_multiplier).__name__})"
            )
        self.width_multiplier = float(width_multiplier)
        self.middle_flow_blocks = validate.positive_int(f"{owner}.middle_flow_blocks", middle_flow_blocks)

        def width(channels: int) -> int:
            return max(MIN_CHANNELS, int(round(channels * self.width_multiplier)))

        def scaled(depths: Sequence[int]) -> tuple[int, ...]:
            return tuple(width(depth) for depth in depths)

        specs = [
            *_ENTRY_BLOCKS,
            *((f"middle_block{index + 1}", _MIDDLE_DEPTHS, "sum", 1) for index in range(self.middle_flow_blocks)),
            *_EXIT_BLOCKS,
        ]
        schedule = _block_strides_and_dilations([stride for *_, stride in specs], output_stride)

        self.entry_conv1 = ConvBNReLU(width(32), 3, strides=_STEM_STRIDE, name="entry_conv1")
        self.entry_conv2 = ConvBNReLU(width(64), 3, name="entry_conv2")
        blocks = [
            XceptionBlock(scaled(depths), skip=skip, strides=strides, dilation_rate=dilation, name=block_name)
            for (block_name, depths, skip, _), (strides, dilation) in zip(specs, schedule, strict=True)
        ]
        num_entry = len(_ENTRY_BLOCKS)
        self.entry_blocks = blocks[:num_entry]
        self.middle_blocks = blocks[num_entry : num_entry + self.middle_flow_blocks]
        self.exit_blocks = blocks[num_entry + self.middle_flow_blocks :]

    def call(self, images: tf.Tensor, training: bool | None = None) -> dict[str, tf.Tensor]:
        """Returns {"low_level": entry block 2 before its stride (stride 4), "high_level": output_stride}."""
        x = self.entry_conv1(tf.cast(images, self.compute_dtype), training=training)
        x = self.entry_conv2(x, training=training)
        x = self.entry_blocks[0](x, training=training)
        x, low_level = self.entry_blocks[1](x, training=training, return_hidden=True)
        for block in [*self.entry_blocks[2:], *self.middle_blocks, *self.exit_blocks]:
            x = block(x, training=training)
        return {"low_level": low_level, "high_level": x}

    def get_config(self) -> dict[str, Any]:
        """Returns the constructor arguments."""
        return {
            **super().get_config(),
            "name": self.name,
            "trainable": self.trainable,
            "output_stride": self.output_stride,
            "width_multiplier": self.width_multiplier,
            "middle_flow_blocks": self.middle_flow_blocks,
        }


def _block_strides_and_dilations(block_strides: Sequence[int], output_stride: int) -> list[tuple[int, int]]:
    """Per-block (stride, dilation) reaching `output_stride` after the stride-2 stem (deeplab's stack_blocks_dense)."""
    current_stride, dilation = _STEM_STRIDE, 1
    schedule = []
    for stride in block_strides:
        if current_stride == output_stride:
            schedule.append((1, dilation))
            dilation *= stride
        else:
            schedule.append((stride, 1))
            current_stride *= stride
    return schedule
