"""Predicting images far larger than a tile: overlapping tiles, blended logits, one compiled function.

Tiles of `tile_size` are taken every `tile_size - overlap` pixels (the last one flush with the image's edge,
a tile larger than the image padded); each tile's scores are weighted by a ramp that falls towards its edges
and summed into a band of tile rows, so no score tensor of the image's size exists: the band holds
`tile_size x width x classes` float32 scores, and the rows no later tile reaches are reduced to class ids as
soon as the band moves on. Every tile has the same shape, so the scoring function is traced once.
"""

import dataclasses
from collections.abc import Callable

import gin
import numpy as np
import tensorflow as tf

from trainer.common import validate
from trainer.common.errors import UserInputError
from trainer.core.inference import window_starts


@gin.configurable("tiling")
@dataclasses.dataclass(frozen=True)
class TilingConfig:
    """When and how `trainer.serving.predict` tiles an image; bound in gin as `tiling.<field>`.

    Attributes:
      tile_size: the side of a square tile; an image with a side longer than this is predicted tile by tile
        (smaller ones whole, as before).
      overlap: pixels shared by neighbouring tiles, where their scores are blended (0 <= overlap < tile_size).
    """

    tile_size: int = 1024
    overlap: int = 128

    def __post_init__(self):
        validate.positive_int("gin binding tiling.tile_size", self.tile_size)
        validate.non_negative_int("gin binding tiling.overlap", self.overlap)
        if self.overlap >= self.tile_size:
            raise UserInputError(
                f"gin binding tiling.overlap: expected fewer pixels than tiling.tile_size ({self.tile_size}), "
                f"received {self.overlap}."
            )

    def needs_tiles(self, height: int, width: int) -> bool:
        return max(height, width) > self.tile_size


def ramp(size: int, overlap: int) -> np.ndarray:
    """float32 [size] weights: rising linearly over the first `overlap` pixels, falling over the last; never 0."""
    distance = np.minimum(np.arange(size), np.arange(size)[::-1]) + 1.0
    return np.minimum(distance / (overlap + 1.0), 1.0).astype(np.float32)


def predict_tiled(
    tile_scores: Callable[[tf.Tensor], tf.Tensor],
    pixels: np.ndarray,
    num_classes: int,
    config: TilingConfig,
    pad_pixel: float = 127.5,
) -> np.ndarray:
    """Class ids [H, W] (uint8, uint16 above 256 classes) of `pixels` [H, W, C] from overlapping tiles.

    Args:
      tile_scores: maps float32 pixels [tile, tile, C] (not normalised) to scores [tile, tile, num_classes];
        called with one shape only.
      pixels: the whole image as decoded; only one tile at a time is converted to float.
      pad_pixel: the pixel value a tile larger than the image is padded with (127.5: 0 in [-1, 1]).
    """
    height, width, channels = pixels.shape
    tile, stride = config.tile_size, config.tile_size - config.overlap
    row_starts = window_starts(height, min(tile, height), stride)
    col_starts = window_starts(width, min(tile, width), stride)
    weights = ramp(tile, config.overlap)
    tile_weights = (weights[:, np.newaxis] * weights[np.newaxis, :])[..., np.newaxis]
    classes = np.zeros([height, width], np.uint8 if num_classes <= 256 else np.uint16)
    band = np.zeros([tile, width, num_classes], np.float32)
    band_top = row_starts[0]
    for index, top in enumerate(row_starts):
        # Rows above this tile row are final: no tile that is still to come covers them.
        shift = top - band_top
        if shift:
            classes[band_top:top] = np.argmax(band[:shift], axis=-1)
            band = np.concatenate([band[shift:], np.zeros([shift, width, num_classes], np.float32)])
            band_top = top
        for left in col_starts:
            window = np.full([tile, tile, channels], pad_pixel, np.float32)
            crop = pixels[top : top + tile, left : left + tile]
            window[: crop.shape[0], : crop.shape[1]] = crop
            scores = tile_scores(tf.constant(window)).numpy() * tile_weights
            band[: crop.shape[0], left : left + crop.shape[1]] += scores[: crop.shape[0], : crop.shape[1]]
        if index == len(row_starts) - 1:
            classes[band_top:height] = np.argmax(band[: height - band_top], axis=-1)
    return classes
