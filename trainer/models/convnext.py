"""ConvNeXt (Tiny, Small, Base) backbone, layer for layer the Keras Applications model, made atrous."""

from collections.abc import Sequence
from typing import Any

import gin
import numpy as np
import tensorflow as tf
import tf_keras as keras

from trainer.common import validate
from trainer.common.errors import expected
from trainer.common.images import to_pixel_range
from trainer.models.atrous import AtrousConv2D
from trainer.models.dropout import ResumableDropout
from trainer.models.layers import require_bool, require_drop_rate
from trainer.models.output_stride import atrous_schedule, check_output_stride
from trainer.models.serialization import SERIALIZATION_PACKAGE

# variant: (blocks per stage, channels per stage), as keras' ConvNeXtTiny / Small / Base.
VARIANTS = {
    "tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
    "small": ((3, 3, 27, 3), (96, 192, 384, 768)),
    "base": ((3, 3, 27, 3), (128, 256, 512, 1024)),
}
LAYER_NORM_EPSILON = 1e-6
LAYER_SCALE_INIT = 1e-6
# The stem (4×4 / 4) and the three downsampling convs (2×2 / 2) before stages 1-3.
DOWNSAMPLING_STRIDES = (4, 2, 2, 2)
# What keras' PreStem subtracts from and divides 0-255 pixels by: the ImageNet mean and standard deviation.
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
# Keras leaves the final LayerNormalization unnamed; this is the name it gets in a fresh session.
FINAL_NORM_NAME = "layer_normalization"


def _layer_norm(name: str) -> keras.layers.LayerNormalization:
    return keras.layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON, name=name)


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class LayerScale(keras.layers.Layer):
    """Multiplies its input by a learnt per-channel scale (`gamma`), keras' ConvNeXt LayerScale."""

    def __init__(self, init_values: float, projection_dim: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.init_values = float(init_values)
        self.projection_dim = validate.positive_int(f"LayerScale({self.name!r}).projection_dim", projection_dim)

    def build(self, input_shape) -> None:
        self.gamma = self.add_weight(
            name="gamma", shape=(self.projection_dim,), initializer=keras.initializers.Constant(self.init_values)
        )
        super().build(input_shape)

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        """Returns inputs · gamma."""
        return inputs * tf.cast(self.gamma, inputs.dtype)

    def get_config(self) -> dict[str, Any]:
        """Returns the constructor arguments."""
        return {**super().get_config(), "init_values": self.init_values, "projection_dim": self.projection_dim}


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class ConvNeXtBlock(keras.layers.Layer):
    """7×7 depthwise (dilated) → LayerNorm → 4× pointwise → GELU → pointwise → layer scale, plus the input.

    Sublayers carry keras' suffixes, so keras' layer name is `f"{block.name}_{sublayer.name}"` for blocks named
    like keras' (`convnext_tiny_stage_2_block_5`).
    """

    def __init__(
        self,
        projection_dim: int,
        dilation_rate: int = 1,
        drop_path_rate: float = 0.0,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        owner = f"{type(self).__name__}({self.name!r})"
        self.projection_dim = validate.positive_int(f"{owner}.projection_dim", projection_dim)
        self.dilation_rate = validate.positive_int(f"{owner}.dilation_rate", dilation_rate)
        self.drop_path_rate = float(drop_path_rate)
        self.depthwise_conv = AtrousConv2D(
            projection_dim,
            7,
            padding="same",
            groups=projection_dim,
            dilation_rate=dilation_rate,
            name="depthwise_conv",
        )
        self.layernorm = _layer_norm("layernorm")
        self.pointwise_conv_1 = keras.layers.Dense(4 * projection_dim, name="pointwise_conv_1")
        self.pointwise_conv_2 = keras.layers.Dense(projection_dim, name="pointwise_conv_2")
        self.layer_scale = LayerScale(LAYER_SCALE_INIT, projection_dim, name="layer_scale")
        self.drop_path = ResumableDropout(self.drop_path_rate, per_example=True, name="stochastic_depth")

    def call(self, inputs: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        """Returns inputs + the block's (scaled, maybe dropped) residual branch."""
        x = self.layernorm(self.depthwise_conv(inputs))
        x = self.pointwise_conv_2(tf.nn.gelu(self.pointwise_conv_1(x), approximate=False))
        return inputs + self.drop_path(self.layer_scale(x), training=training)

    def weighted_layers(self) -> dict[str, keras.layers.Layer]:
        """{sublayer name: sublayer} for every sublayer with weights, in keras' order."""
        layers = [self.depthwise_conv, self.layernorm, self.pointwise_conv_1, self.pointwise_conv_2, self.layer_scale]
        return {layer.name: layer for layer in layers}

    def get_config(self) -> dict[str, Any]:
        """Returns the constructor arguments."""
        config = super().get_config()
        config.update(
            {
                "projection_dim": self.projection_dim,
                "dilation_rate": self.dilation_rate,
                "drop_path_rate": self.drop_path_rate,
            }
        )
        return config


@gin.configurable
@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class ConvNeXt(keras.Model):
    """ConvNeXt backbone returning stride-4 low-level and `output_stride` high-level features.

    Weights are the same, layer for layer, as `keras.applications.ConvNeXt<Variant>(include_top=False)`, its
    layer scales and LayerNorms included (the stem and downsampling blocks are small Sequentials, as in keras);
    `keras_application_layers()` maps keras' names to ours. With `preprocessing` (keras' default) the pipeline's
    [-1, 1] images are normalised with the ImageNet mean and standard deviation, as keras' PreStem does. Below
    `output_stride`, a downsampling conv keeps stride 1 ('same' padding, the current rate) and the stages after
    it dilate their 7×7 depthwise convs. `depths` / `projection_dims` override the variant's (thin test models).
    There is no batch norm: LayerNorm normalises each position alone, the same under every strategy.
    """

    def __init__(
        self,
        variant: str = "tiny",
        output_stride: int = 16,
        preprocessing: bool = True,
        drop_path_rate: float = 0.0,
        depths: Sequence[int] | None = None,
        projection_dims: Sequence[int] | None = None,
        name: str = "convnext",
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        owner = type(self).__name__
        self.variant = validate.choice(f"{owner}.variant", variant, tuple(VARIANTS))
        self.output_stride = check_output_stride(owner, output_stride)
        self.preprocessing = require_bool(f"{owner}.preprocessing", preprocessing)
        self.drop_path_rate = require_drop_rate(f"{owner}.drop_path_rate", drop_path_rate)
        default_depths, default_dims = VARIANTS[self.variant]
        self.depths = validate.positive_ints(f"{owner}.depths", default_depths if depths is None else depths)
        dims = default_dims if projection_dims is None else projection_dims
        self.projection_dims = validate.positive_ints(f"{owner}.projection_dims", dims)
        for field, value in (("depths", self.depths), ("projection_dims", self.projection_dims)):
            if len(value) != 4:
                raise expected(f"{owner}.{field}", "4 entries (one per stage)", value)
        self.downsampling, self.stages = self._layers()
        self.final_norm = _layer_norm("final_layernorm")

    @property
    def keras_name(self) -> str:
        """The keras model's name, the prefix of its layer names (`convnext_tiny`)."""
        return f"convnext_{self.variant}"

    def _layers(self) -> tuple[list[keras.Sequential], list[list[ConvNeXtBlock]]]:
        # Each stage is a stride-1 "layer" after its downsampling conv: its rate is the one after a dropped stride.
        schedule = atrous_schedule([s for stride in DOWNSAMPLING_STRIDES for s in (stride, 1)], self.output_stride)
        drop_rates = [float(rate) for rate in np.linspace(0.0, self.drop_path_rate, sum(self.depths))]
        prefix, downsampling, stages = self.keras_name, [], []
        for stage, dim in enumerate(self.projection_dims):
            stride, rate = schedule[2 * stage]
            spatial = {"strides": stride, "dilation_rate": rate, "padding": "valid" if stride > 1 else "same"}
            if stage == 0:
                conv = AtrousConv2D(dim, 4, name=f"{prefix}_stem_conv", **spatial)
                layers, block_name = [conv, _layer_norm(f"{prefix}_stem_layernorm")], f"{prefix}_stem"
            else:
                conv = AtrousConv2D(dim, 2, name=f"{prefix}_downsampling_conv_{stage - 1}", **spatial)
                norm = _layer_norm(f"{prefix}_downsampling_layernorm_{stage - 1}")
                layers, block_name = [norm, conv], f"{prefix}_downsampling_block_{stage - 1}"
            downsampling.append(keras.Sequential(layers, name=block_name))
            first = sum(self.depths[:stage])
            stages.append(
                [
                    ConvNeXtBlock(
                        dim,
                        dilation_rate=schedule[2 * stage + 1][1],
                        drop_path_rate=drop_rates[first + index],
                        name=f"{prefix}_stage_{stage}_block_{index}",
                    )
                    for index in range(self.depths[stage])
                ]
            )
        return downsampling, stages

    def preprocess(self, images: tf.Tensor) -> tf.Tensor:
        """[-1, 1] images → keras' PreStem normalisation of 0-255 pixels (float32)."""
        mean, std = tf.constant(IMAGENET_MEAN, tf.float32), tf.constant(IMAGENET_STD, tf.float32)
        return (to_pixel_range(images) - mean) / std

    def call(self, images: tf.Tensor, training: bool | None = None) -> dict[str, tf.Tensor]:
        """Returns {"low_level": stage-0 output (stride 4), "high_level": last stage, normalised (output_stride)}."""
        x = tf.cast(self.preprocess(images) if self.preprocessing else images, self.compute_dtype)
        low_level = None
        for stage, (downsample, blocks) in enumerate(zip(self.downsampling, self.stages, strict=True)):
            x = downsample(x)
            for block in blocks:
                x = block(x, training=training)
            if stage == 0:
                low_level = x
        return {"low_level": low_level, "high_level": self.final_norm(x)}

    def keras_application_layers(self) -> dict[str, keras.layers.Layer]:
        """{Keras Applications ConvNeXt layer name: our layer} for every layer that has weights.

        The stem and downsampling blocks are Sequentials in keras too: one name, the weights of both sublayers.
        """
        layers = {downsample.name: downsample for downsample in self.downsampling}
        for blocks in self.stages:
            for block in blocks:
                layers.update({f"{block.name}_{suffix}": layer for suffix, layer in block.weighted_layers().items()})
        layers[FINAL_NORM_NAME] = self.final_norm
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
            "drop_path_rate": self.drop_path_rate,
            "depths": self.depths,
            "projection_dims": self.projection_dims,
        }
