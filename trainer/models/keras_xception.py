"""Keras Applications' Xception (the DeepLabV3+ tutorials' encoder), layer for layer, with atrous exit flow."""

from collections.abc import Sequence
from typing import Any

import gin
import tensorflow as tf
import tf_keras as keras

from trainer.common import validate
from trainer.models.batch_norm import BatchNormOwner, batch_norm_layer
from trainer.models.output_stride import atrous_schedule, check_output_stride
from trainer.models.serialization import SERIALIZATION_PACKAGE

# (block number, separable conv widths, shortcut, activation) of keras' blocks 2-14; blocks 5-12 are the middle flow.
# Activation "pre": ReLU before each separable conv (block 2 skips the first: its input is activated already);
# "post": after each BN (block 14). Strided blocks end in a 3×3 / 2 max pool and have a strided 1×1 conv shortcut.
ENTRY_BLOCKS = ((2, (128, 128)), (3, (256, 256)), (4, (728, 728)))
MIDDLE_FILTERS = (728, 728, 728)
EXIT_BLOCK = (13, (728, 1024))
FINAL_BLOCK = (14, (1536, 2048))
VALID_SHORTCUTS = ("conv", "identity", "none")
VALID_ACTIVATIONS = ("pre", "pre_but_first", "post")
# Keras leaves the strided blocks' shortcut conv and BN unnamed: the names they get in a fresh session, in order.
SHORTCUT_NAMES = (("conv2d", "batch_normalization"),) + tuple(
    (f"conv2d_{index}", f"batch_normalization_{index}") for index in (1, 2, 3)
)


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class KerasXceptionBlock(BatchNormOwner, keras.layers.Layer):
    """Separable 3×3 convs with BN (dilated), then a max pool when strided, plus a conv or identity shortcut.

    Sublayers are `sepconv{i}` / `sepconv{i}_bn`, so keras' layer name is `f"{block.name}_{sublayer.name}"` for
    blocks named like keras' (`block7`); the shortcut is `shortcut_conv` / `shortcut_bn`.
    """

    def __init__(
        self,
        filters: Sequence[int],
        shortcut: str = "identity",
        activation: str = "pre",
        pool_strides: int | None = None,
        dilation_rate: int = 1,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        owner = f"{type(self).__name__}({self.name!r})"
        self.filters = validate.positive_ints(f"{owner}.filters", filters)
        self.shortcut = validate.choice(f"{owner}.shortcut", shortcut, VALID_SHORTCUTS)
        self.activation = validate.choice(f"{owner}.activation", activation, VALID_ACTIVATIONS)
        self.pool_strides = (
            None if pool_strides is None else validate.positive_int(f"{owner}.pool_strides", pool_strides)
        )
        self.dilation_rate = validate.positive_int(f"{owner}.dilation_rate", dilation_rate)
        self.sepconvs = [
            keras.layers.SeparableConv2D(
                width, 3, padding="same", dilation_rate=dilation_rate, use_bias=False, name=f"sepconv{index + 1}"
            )
            for index, width in enumerate(self.filters)
        ]
        self.norms = [batch_norm_layer(f"sepconv{index + 1}_bn") for index in range(len(self.filters))]
        self.pool = (
            keras.layers.MaxPooling2D(3, strides=pool_strides, padding="same", name="pool")
            if pool_strides is not None
            else None
        )
        strides = pool_strides or 1
        if self.shortcut == "conv":
            self.shortcut_conv = keras.layers.Conv2D(
                self.filters[-1], 1, strides=strides, padding="same", use_bias=False, name="shortcut_conv"
            )
            self.shortcut_bn = batch_norm_layer("shortcut_bn")
        else:
            self.shortcut_conv = self.shortcut_bn = None

    def call(self, inputs: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        """Returns (the block's output, its features before the pool)."""
        x = inputs
        for index, (conv, norm) in enumerate(zip(self.sepconvs, self.norms, strict=True)):
            if self.activation == "pre" or (self.activation == "pre_but_first" and index > 0):
                x = tf.nn.relu(x)
            x = norm(conv(x), training=training)
            if self.activation == "post":
                x = tf.nn.relu(x)
        before_pool = x
        if self.pool is not None:
            x = self.pool(x)
        if self.shortcut_conv is not None:
            x = x + self.shortcut_bn(self.shortcut_conv(inputs), training=training)
        elif self.shortcut == "identity":
            x = x + inputs
        return x, before_pool

    def keras_layers(self) -> dict[str, keras.layers.Layer]:
        """{keras layer name: sublayer} for the separable convs and their BN layers."""
        layers = {}
        for conv, norm in zip(self.sepconvs, self.norms, strict=True):
            layers[f"{self.name}_{conv.name}"] = conv
            layers[f"{self.name}_{norm.name}"] = norm
        return layers

    def get_config(self) -> dict[str, Any]:
        """Returns the constructor arguments."""
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "shortcut": self.shortcut,
                "activation": self.activation,
                "pool_strides": self.pool_strides,
                "dilation_rate": self.dilation_rate,
            }
        )
        return config


@gin.configurable
@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class KerasXception(BatchNormOwner, keras.Model):
    """Keras' Xception backbone returning stride-4 low-level and `output_stride` high-level features.

    Weights are the same, layer for layer, as `keras.applications.Xception(include_top=False)` (the encoder of the
    DeepLabV3+ sketch in TensorFlow 2 tutorials; `keras_application_layers()` maps keras' names to ours), and so
    is its input: the pipeline's [-1, 1] images, keras' "tf" preprocessing. The low-level features are block 3's
    output before its pool (stride 4, 256 channels), the high-level ones block 14's. Once the stride reaches
    `output_stride`, a strided block keeps stride 1 (its pool and shortcut too) and later separable convs dilate.
    Keras' stem convs are 'valid', so a side of n gives (n - 3) // 2 - 1 at stride 2 before the 'same' blocks.
    `width_multiplier` and `middle_flow_blocks` (keras: 1.0 and 8) make thin models for tests.
    """

    def __init__(
        self,
        output_stride: int = 16,
        width_multiplier: float = 1.0,
        middle_flow_blocks: int = 8,
        name: str = "keras_xception",
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        owner = type(self).__name__
        self.output_stride = check_output_stride(owner, output_stride)
        self.width_multiplier = float(validate.positive_number(f"{owner}.width_multiplier", width_multiplier))
        self.middle_flow_blocks = validate.positive_int(f"{owner}.middle_flow_blocks", middle_flow_blocks)
        width = self._width
        self.stem_conv1 = keras.layers.Conv2D(width(32), 3, strides=2, use_bias=False, name="block1_conv1")
        self.stem_bn1 = batch_norm_layer("block1_conv1_bn")
        self.stem_conv2 = keras.layers.Conv2D(width(64), 3, use_bias=False, name="block1_conv2")
        self.stem_bn2 = batch_norm_layer("block1_conv2_bn")
        self.blocks = self._blocks()

    def _width(self, channels: int) -> int:
        return max(1, int(channels * self.width_multiplier))

    def _blocks(self) -> list[KerasXceptionBlock]:
        # Blocks 2, 3, 4 and 13 stride by 2; the stem already did once.
        middle = [(5 + index, MIDDLE_FILTERS) for index in range(self.middle_flow_blocks)]
        layout = [*ENTRY_BLOCKS, *middle, EXIT_BLOCK, FINAL_BLOCK]
        strided = {number for number, _ in (*ENTRY_BLOCKS, EXIT_BLOCK)}
        strides = [2 if number in strided else 1 for number, _ in layout]
        schedule = atrous_schedule(strides, self.output_stride, input_stride=2)
        blocks = []
        for (number, filters), stride, (layer_stride, rate) in zip(layout, strides, schedule, strict=True):
            last = number == FINAL_BLOCK[0]
            blocks.append(
                KerasXceptionBlock(
                    [self._width(width) for width in filters],
                    shortcut="conv" if stride == 2 else ("none" if last else "identity"),
                    activation="post" if last else ("pre_but_first" if number == 2 else "pre"),
                    pool_strides=layer_stride if stride == 2 else None,
                    dilation_rate=rate,
                    name=f"block{number}",
                )
            )
        return blocks

    def call(self, images: tf.Tensor, training: bool | None = None) -> dict[str, tf.Tensor]:
        """Returns {"low_level": block 3 before its pool (stride 4), "high_level": block 14 (output_stride)}."""
        x = tf.nn.relu(self.stem_bn1(self.stem_conv1(tf.cast(images, self.compute_dtype)), training=training))
        x = tf.nn.relu(self.stem_bn2(self.stem_conv2(x), training=training))
        low_level = None
        for block in self.blocks:
            x, before_pool = block(x, training=training)
            if block.name == "block3":
                low_level = before_pool
        return {"low_level": low_level, "high_level": x}

    def keras_application_layers(self) -> dict[str, keras.layers.Layer]:
        """{Keras Applications Xception layer name: our layer} for every layer that has weights.

        Keras' unnamed shortcut layers are named as a fresh session names them; the `.h5` loader renumbers a file's
        unnamed layers the same way (`canonical_layer_names`).
        """
        layers = {
            "block1_conv1": self.stem_conv1,
            "block1_conv1_bn": self.stem_bn1,
            "block1_conv2": self.stem_conv2,
            "block1_conv2_bn": self.stem_bn2,
        }
        shortcut_blocks = [block for block in self.blocks if block.shortcut_conv is not None]
        for block, (conv_name, bn_name) in zip(shortcut_blocks, SHORTCUT_NAMES, strict=True):
            layers[conv_name], layers[bn_name] = block.shortcut_conv, block.shortcut_bn
        for block in self.blocks:
            layers.update(block.keras_layers())
        return layers

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
