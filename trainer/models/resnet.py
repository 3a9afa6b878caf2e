"""ResNet v1 backbone with bottleneck blocks and atrous (dilated) last stages for dense prediction."""

from collections.abc import Sequence
from typing import Any

import gin
import tensorflow as tf
import tf_keras as keras

from trainer.common import validate
from trainer.common.errors import UserInputError, expected
from trainer.common.images import to_pixel_range
from trainer.models.batch_norm import BatchNormOwner
from trainer.models.layers import ConvBNReLU
from trainer.models.serialization import SERIALIZATION_PACKAGE

BOTTLENECK_EXPANSION = 4
VALID_OUTPUT_STRIDES = (8, 16, 32)
VALID_STEMS = ("v1", "beta")
# Per-channel ImageNet mean (BGR, 0-255) that the Keras ResNet weights subtract from their inputs.
_CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
# keras.applications' ResNet uses this epsilon; matching it lets its ImageNet weights load unchanged.
BN_EPSILON = 1.001e-5


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class BottleneckBlock(BatchNormOwner, keras.layers.Layer):
    """ResNet v1 bottleneck as in keras.applications: 1×1 (strided) → 3×3 (dilated) → 1×1 (×4), plus a shortcut."""

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
        self.filters = validate.positive_int(f"{type(self).__name__}({self.name!r}).filters", filters)
        self.strides = strides
        self.dilation_rate = dilation_rate
        self.use_projection = bool(use_projection)
        # Every conv carries a bias and the stride sits on the first 1×1, exactly as in keras' ResNet50/101,
        # so that its pretrained weights map one to one (slim's resnet_v1 strides the 3×3 instead).
        keras_like = {"use_bias": True, "bn_epsilon": BN_EPSILON}
        self.conv1 = ConvBNReLU(filters, 1, strides=strides, name="conv1", **keras_like)
        self.conv2 = ConvBNReLU(filters, 3, dilation_rate=dilation_rate, name="conv2", **keras_like)
        self.conv3 = ConvBNReLU(filters * BOTTLENECK_EXPANSION, 1, activation=False, name="conv3", **keras_like)
        self.shortcut = (
            ConvBNReLU(
                filters * BOTTLENECK_EXPANSION, 1, strides=strides, activation=False, name="shortcut", **keras_like
            )
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

    def keras_layers(self, prefix: str) -> dict[str, keras.layers.Layer]:
        """Maps keras.applications names (`{prefix}_1_conv`, `{prefix}_0_bn`, …) to this block's layers."""
        convs = {"1": self.conv1, "2": self.conv2, "3": self.conv3}
        if self.shortcut is not None:
            convs["0"] = self.shortcut
        layers = {}
        for index, conv in sorted(convs.items()):
            layers[f"{prefix}_{index}_conv"] = conv.conv
            layers[f"{prefix}_{index}_bn"] = conv.bn
        return layers

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
class ResNet(BatchNormOwner, keras.Model):
    """ResNet v1 (bottleneck) backbone returning stride-4 low-level and `output_stride` high-level features.

    With `stem="v1"` the network is layer for layer keras.applications' ResNet50/ResNet101 (see
    `keras_application_layers`), so at output_stride 32 it computes the same features from the same weights.
    `stem="beta"` replaces the 7×7 stem conv by DeepLab's resnet_v1_beta stem of three 3×3 convs.

    Stages that would downsample past `output_stride` keep stride 1 and dilate their 3×3 convs instead. The
    last stage's block `i` additionally multiplies its dilation by `multi_grid[i % len(multi_grid)]`, so the
    DeepLab default (1, 2, 4) applies to a 3-block last stage and the default (1, 1, 1) fits any depth.
    `caffe_preprocessing` converts the input pipeline's [-1, 1] RGB images to what the Keras ImageNet `.h5`
    weights expect; turn it on together with `init.keras_h5`.
    """

    def __init__(
        self,
        block_depths: Sequence[int] = (3, 4, 6, 3),
        base_filters: int = 64,
        output_stride: int = 16,
        multi_grid: Sequence[int] = (1, 1, 1),
        stem: str = "v1",
        caffe_preprocessing: bool = False,
        name: str = "resnet",
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        self.caffe_preprocessing = bool(caffe_preprocessing)
        self._set_architecture(block_depths, base_filters, output_stride, multi_grid, stem)
        # Explicit symmetric padding + 'valid' (keras' conv1_pad / pool1_pad): 'same' would pad an even input
        # asymmetrically and shift every feature by a pixel relative to the pretrained network.
        self.stem_pad = keras.layers.ZeroPadding2D(3 if stem == "v1" else 1, name="stem_pad")
        self.stem_convs = _stem_convs(stem, self.base_filters)
        self.pool_pad = keras.layers.ZeroPadding2D(1, name="pool_pad")
        self.stem_pool = keras.layers.MaxPooling2D(3, strides=2, padding="valid", name="stem_pool")
        self.stages = self._stages()

    def _set_architecture(
        self, block_depths: Sequence[int], base_filters: int, output_stride: int, multi_grid: Sequence[int], stem: str
    ) -> None:
        """Validates and keeps the constructor arguments that shape the network."""
        owner = type(self).__name__
        self.block_depths = validate.positive_ints(f"{owner}.block_depths", block_depths)
        if len(self.block_depths) != 4:
            raise expected(f"{owner}.block_depths", "4 entries (one per stage)", block_depths)
        self.base_filters = validate.positive_int(f"{owner}.base_filters", base_filters)
        if output_stride not in VALID_OUTPUT_STRIDES:
            raise UserInputError(
                f"{owner}: expected `output_stride` in {VALID_OUTPUT_STRIDES}, received {output_stride!r}"
            )
        self.output_stride = output_stride
        self.multi_grid = validate.positive_ints(f"{owner}.multi_grid", multi_grid)
        self.stem = validate.choice(f"{owner}.stem", stem, VALID_STEMS)
        if output_stride == 32 and self.multi_grid[0] > 1:
            raise UserInputError(
                f"{owner}: expected multi_grid[0] == 1 when the last stage downsamples (output_stride 32), "
                f"received output_stride={output_stride}, multi_grid={self.multi_grid}"
            )

    def _stages(self) -> list[list[BottleneckBlock]]:
        """The four stages of bottleneck blocks; the last one's dilations follow `multi_grid`."""
        stage_strides, stage_dilations = _stage_strides_and_dilations(self.output_stride)
        stages = []
        last = len(self.block_depths) - 1
        for stage, depth in enumerate(self.block_depths):
            blocks = []
            for index in range(depth):
                grid = self.multi_grid[index % len(self.multi_grid)] if stage == last else 1
                blocks.append(
                    BottleneckBlock(
                        self.base_filters * 2**stage,
                        strides=stage_strides[stage] if index == 0 else 1,
                        dilation_rate=stage_dilations[stage] * grid,
                        # The first block of every stage changes the channel count (and maybe the stride).
                        use_projection=index == 0,
                        name=f"stage{stage + 1}_block{index + 1}",
                    )
                )
            stages.append(blocks)
        return stages

    @property
    def stem_conv(self) -> ConvBNReLU:
        """The first (strided) stem conv."""
        return self.stem_convs[0]

    def call(self, images: tf.Tensor, training: bool | None = None) -> dict[str, tf.Tensor]:
        """Returns {"low_level": stage-1 output (stride 4), "high_level": stage-4 output (output_stride)}."""
        images = tf.cast(images, tf.float32)
        if self.caffe_preprocessing:
            # The Keras ImageNet weights were trained on 0-255 BGR images minus the ImageNet mean, not on the
            # pipeline's [-1, 1] RGB.
            images = to_pixel_range(images)[..., ::-1] - tf.constant(_CAFFE_BGR_MEAN, tf.float32)
        x = self.stem_pad(tf.cast(images, self.compute_dtype))
        for conv in self.stem_convs:
            x = conv(x, training=training)
        # Zero padding before the max pool is exact: its input is post-ReLU, so zeros never win the max.
        x = self.stem_pool(self.pool_pad(x))
        low_level = None
        for stage, blocks in enumerate(self.stages):
            for block in blocks:
                x = block(x, training=training)
            if stage == 0:
                low_level = x
        return {"low_level": low_level, "high_level": x}

    def keras_application_layers(self) -> dict[str, keras.layers.Layer]:
        """Maps keras.applications ResNet layer names (`conv1_conv`, `conv2_block1_0_bn`, …) to our layers.

        Covers every layer with weights; the "beta" stem has no keras counterpart, so its entries are absent.
        """
        layers = {}
        if self.stem == "v1":
            layers["conv1_conv"] = self.stem_conv.conv
            layers["conv1_bn"] = self.stem_conv.bn
        for stage, blocks in enumerate(self.stages):
            for index, block in enumerate(blocks):
                layers.update(block.keras_layers(f"conv{stage + 2}_block{index + 1}"))
        return layers

    def get_config(self) -> dict[str, Any]:
        """Returns the constructor arguments."""
        return {
            **super().get_config(),
            "name": self.name,
            "trainable": self.trainable,
            "block_depths": self.block_depths,
            "base_filters": self.base_filters,
            "output_stride": self.output_stride,
            "multi_grid": self.multi_grid,
            "stem": self.stem,
            "caffe_preprocessing": self.caffe_preprocessing,
        }


def _stem_convs(stem: str, base_filters: int) -> list[ConvBNReLU]:
    """The stem's convs: keras' 7×7/2 ("v1") or resnet_v1_beta's three 3×3 of 64/2, 64, 128 (scaled) ("beta")."""
    if stem == "v1":
        return [
            ConvBNReLU(
                base_filters, 7, strides=2, padding="valid", use_bias=True, bn_epsilon=BN_EPSILON, name="stem_conv"
            )
        ]
    # No conv bias in the beta stem: slim has none and there are no keras weights to mirror.
    widths = (base_filters, base_filters, 2 * base_filters)
    return [
        ConvBNReLU(
            width,
            3,
            strides=2 if index == 0 else 1,
            padding="valid" if index == 0 else "same",
            bn_epsilon=BN_EPSILON,
            name=f"stem_conv{index + 1}",
        )
        for index, width in enumerate(widths)
    ]


def _stage_strides_and_dilations(output_stride: int) -> tuple[list[int], list[int]]:
    """Per-stage (stride, dilation) that reach `output_stride`: stem (4) × 1, 2, 2, 2 with atrous tail."""
    if output_stride == 32:
        return [1, 2, 2, 2], [1, 1, 1, 1]
    if output_stride == 16:
        return [1, 2, 2, 1], [1, 1, 1, 2]
    return [1, 2, 1, 1], [1, 1, 2, 4]
