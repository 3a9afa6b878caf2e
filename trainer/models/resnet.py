"""ResNet v1 backbone with bottleneck blocks and atrous (dilated) last stages for dense prediction."""

from collections.abc import Sequence
from typing import Any

import gin
import tensorflow as tf
import tf_keras as keras

from trainer.config import ConfigError
from trainer.models.layers import (
    SERIALIZATION_PACKAGE,
    ConvBNReLU,
    require_positive_int,
    require_positive_ints,
)

BOTTLENECK_EXPANSION = 4
VALID_OUTPUT_STRIDES = (8, 16, 32)


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class BottleneckBlock(keras.layers.Layer):
    """ResNet v1 bottleneck: 1×1 → 3×3 (strided / dilated) → 1×1 (×4 channels), plus a shortcut."""

    def __init__(
        self,
        filters: int,
        strides: int = 1,
        dilation_rate: int = 1,
        use_projection: bool = False,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        self.filters = require_positive_int(type(self).__name__, "filters", filters)
        self.strides = strides
        self.dilation_rate = dilation_rate
        self.use_projection = bool(use_projection)
        self.conv1 = ConvBNReLU(filters, 1, name="conv1")
        # The stride sits on the 3×3 (as in slim's resnet_v1 used by DeepLab), not on the first 1×1.
        self.conv2 = ConvBNReLU(filters, 3, strides=strides, dilation_rate=dilation_rate, name="conv2")
        self.conv3 = ConvBNReLU(filters * BOTTLENECK_EXPANSION, 1, activation=False, name="conv3")
        self.shortcut = (
            ConvBNReLU(filters * BOTTLENECK_EXPANSION, 1, strides=strides, activation=False, name="shortcut")
            if self.use_projection
            else None
        )

    def call(self, inputs: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        """Returns relu(residual(inputs) + shortcut(inputs))."""
        residual = self.conv1(inputs, training=training)
        residual = self.conv2(residual, training=training)
        residual = self.conv3(residual, training=training)
        shortcut = inputs if self.shortcut is None else self.shortcut(inputs, training=training)
        return tf.nn.relu(residual + shortcut)

    def get_config(self) -> dict[str, Any]:
        """Returns the constructor arguments."""
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "strides": self.strides,
                "dilation_rate": self.dilation_rate,
                "use_projection": self.use_projection,
            }
        )
        return config


@gin.configurable
@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class ResNet(keras.Model):
    """ResNet v1 (bottleneck) backbone returning stride-4 low-level and `output_stride` high-level features.

    Stages that would downsample past `output_stride` keep stride 1 and dilate their 3×3 convs instead. The
    last stage's block `i` additionally multiplies its dilation by `multi_grid[i % len(multi_grid)]`, so the
    DeepLab default (1, 2, 4) applies to a 3-block last stage and the default (1, 1, 1) fits any depth.
    """

    def __init__(
        self,
        block_depths: Sequence[int] = (3, 4, 6, 3),
        base_filters: int = 64,
        output_stride: int = 16,
        multi_grid: Sequence[int] = (1, 1, 1),
        name: str = "resnet",
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        owner = type(self).__name__
        self.block_depths = require_positive_ints(owner, "block_depths", block_depths)
        if len(self.block_depths) != 4:
            raise ConfigError(
                f"{owner}: expected `block_depths` to have 4 entries (one per stage), "
                f"received {tuple(block_depths)!r} with {len(self.block_depths)}"
            )
        self.base_filters = require_positive_int(owner, "base_filters", base_filters)
        if output_stride not in VALID_OUTPUT_STRIDES:
            raise ConfigError(
                f"{owner}: expected `output_stride` in {VALID_OUTPUT_STRIDES}, received {output_stride!r}"
            )
        self.output_stride = output_stride
        self.multi_grid = require_positive_ints(owner, "multi_grid", multi_grid)

        stage_strides, stage_dilations = _stage_strides_and_dilations(output_stride)
        if stage_strides[-1] > 1 and self.multi_grid[0] > 1:
            raise ConfigError(
                f"{owner}: expected multi_grid[0] == 1 when the last stage downsamples (output_stride 32), "
                f"received output_stride={output_stride}, multi_grid={self.multi_grid}"
            )

        self.stem_conv = ConvBNReLU(base_filters, 7, strides=2, name="stem_conv")
        self.stem_pool = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")
        self.stages: list[list[BottleneckBlock]] = []
        last = len(self.block_depths) - 1
        for stage, depth in enumerate(self.block_depths):
            blocks = []
            for index in range(depth):
                grid = self.multi_grid[index % len(self.multi_grid)] if stage == last else 1
                blocks.append(
                    BottleneckBlock(
                        base_filters * 2**stage,
                        strides=stage_strides[stage] if index == 0 else 1,
                        dilation_rate=stage_dilations[stage] * grid,
                        # The first block of every stage changes the channel count (and maybe the stride).
                        use_projection=index == 0,
                        name=f"stage{stage + 1}_block{index + 1}",
                    )
                )
            self.stages.append(blocks)

    def call(self, images: tf.Tensor, training: bool | None = None) -> dict[str, tf.Tensor]:
        """Returns {"low_level": stage-1 output (stride 4), "high_level": stage-4 output (output_stride)}."""
        x = self.stem_conv(tf.cast(images, self.compute_dtype), training=training)
        x = self.stem_pool(x)
        low_level = None
        for stage, blocks in enumerate(self.stages):
            for block in blocks:
                x = block(x, training=training)
            if stage == 0:
                low_level = x
        return {"low_level": low_level, "high_level": x}

    def get_config(self) -> dict[str, Any]:
        """Returns the constructor arguments."""
        return {
            "name": self.name,
            "trainable": self.trainable,
            "block_depths": self.block_depths,
            "base_filters": self.base_filters,
            "output_stride": self.output_stride,
            "multi_grid": self.multi_grid,
        }


def _stage_strides_and_dilations(output_stride: int) -> tuple[list[int], list[int]]:
    """Per-stage (stride, dilation) that reach `output_stride`: stem (4) × 1, 2, 2, 2 with atrous tail."""
    if output_stride == 32:
        return [1, 2, 2, 2], [1, 1, 1, 1]
    if output_stride == 16:
        return [1, 2, 2, 1], [1, 1, 1, 2]
    return [1, 2, 1, 1], [1, 1, 2, 4]
