"""`PhotometricJitter`: the gin-bound settings of the random colour changes of training images."""

import dataclasses

import gin
import tensorflow as tf

from trainer.common.errors import expected
from trainer.data import augment


def _check_range(binding: str, value: tuple[float, ...], lowest: float) -> None:
    if len(value) != 2 or not lowest <= value[0] <= value[1] or (value[0] == value[1] and value[0] != 1):
        raise expected(
            f"photometric_jitter.{binding}",
            f"(lower, upper) with {lowest} <= lower < upper, or (1, 1) to leave it unchanged",
            value,
        )


def _check_delta(binding: str, value: float, highest: float) -> None:
    if not 0 <= value <= highest:
        raise expected(f"photometric_jitter.{binding}", f"a value in [0, {highest}]", value)


@gin.configurable("photometric_jitter")
@dataclasses.dataclass(frozen=True)
class PhotometricJitter:
    """Random colour changes of training images (`input_pipeline.photometric_jitter = @photometric_jitter()`).

    The defaults are mmsegmentation's PhotoMetricDistortion: brightness +-32/255, contrast and saturation
    x[0.5, 1.5], hue +-18 degrees.

    Attributes:
      brightness_delta: the largest brightness shift, as a fraction of the full range; 0 disables it.
      contrast_range: (lower, upper) contrast factors; (1, 1) disables it.
      saturation_range: (lower, upper) saturation factors; (1, 1) disables it.
      hue_delta: the largest hue rotation as a fraction of the colour wheel, in [0, 0.5]; 0 disables it.
    """

    brightness_delta: float = 32 / 255
    contrast_range: tuple[float, float] = (0.5, 1.5)
    saturation_range: tuple[float, float] = (0.5, 1.5)
    hue_delta: float = 18 / 360

    def __post_init__(self):
        object.__setattr__(self, "contrast_range", tuple(float(v) for v in self.contrast_range))
        object.__setattr__(self, "saturation_range", tuple(float(v) for v in self.saturation_range))
        _check_delta("brightness_delta", self.brightness_delta, 1)
        _check_range("contrast_range", self.contrast_range, 0.0)
        _check_range("saturation_range", self.saturation_range, 0.0)
        _check_delta("hue_delta", self.hue_delta, 0.5)

    def __call__(self, image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        """Returns `image` (float32 in [-1, 1]) with its colours changed at random, a function of `seed`."""
        return augment.photometric_jitter(
            image, seed, self.brightness_delta, self.contrast_range, self.saturation_range, self.hue_delta
        )
