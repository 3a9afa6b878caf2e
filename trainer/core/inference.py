"""Per-pixel scores for a batch of images: whole image or sliding window, with multi-scale and flip TTA.

Every function takes a `logits_fn(images) -> scores [N, h, w, C]` callable (a keras model in inference mode, or
a loaded SavedModel signature) and returns float32 scores at the input's own height and width: scaled or
flipped logits are resized and flipped back, windows are placed back where they came from; labels are never
touched. Window positions and scaled sizes are computed in Python from the static input size, so the graph
has static shapes (TPU/XLA) and runs inside `strategy.run` under every strategy.
"""

import dataclasses
import enum
from collections.abc import Callable, Sequence

import gin
import numpy as np
import tensorflow as tf

from trainer.common.errors import UserInputError

LogitsFn = Callable[[tf.Tensor], tf.Tensor]


class InferenceMode(enum.Enum):
    """How the model sees an image: all at once, or in overlapping windows of the training crop size."""

    WHOLE = "whole"
    SLIDE = "slide"


def _pair(binding: str, value: Sequence[int] | None) -> tuple[int, int] | None:
    if value is None:
        return None
    pair = tuple(value) if isinstance(value, list | tuple) else (value,)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair):
        raise UserInputError(
            f"gin binding {binding}: expected (height, width) of two positive ints, received {value!r} "
            f"(of type {type(value).__name__})."
        )
    return pair


@gin.configurable("inference")
@dataclasses.dataclass(frozen=True)
class InferenceConfig:
    """How evaluation and prediction turn images into scores; bound in gin as `inference.<field>`.

    Attributes:
      mode: 'whole' (the model sees the whole, padded image) or 'slide' (windows of `crop_size` every `stride`
        pixels, the logits of overlapping windows averaged, as mmsegmentation's slide mode).
      crop_size: (height, width) of a sliding window; None: the training crop (`input_pipeline.crop_size`).
        An image smaller than the window is seen whole along that side.
      stride: (height, width) between windows; None: two thirds of the window (e.g. 341 for 512).
      scales: image scales whose logits are averaged, e.g. (0.5, 0.75, 1.0, 1.25, 1.5, 1.75); (1.0,) is plain.
      flip: also run every scale on the left-right flipped image and average its flipped-back logits.
    """

    mode: str = InferenceMode.WHOLE.value
    crop_size: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False

    def __post_init__(self):
        try:
            mode = InferenceMode(self.mode.value if isinstance(self.mode, InferenceMode) else self.mode)
        except ValueError:
            valid = ", ".join(repr(m.value) for m in InferenceMode)
            raise UserInputError(
                f"gin binding inference.mode: expected one of {{{valid}}}, received {self.mode!r}."
            ) from None
        object.__setattr__(self, "mode", mode.value)
        crop_size = _pair("inference.crop_size", self.crop_size)
        stride = _pair("inference.stride", self.stride)
        object.__setattr__(self, "crop_size", crop_size)
        object.__setattr__(self, "stride", stride)
        scales = tuple(self.scales) if isinstance(self.scales, list | tuple) else (self.scales,)
        if not scales or not all(isinstance(s, int | float) and not isinstance(s, bool) and s > 0 for s in scales):
            raise UserInputError(
                "gin binding inference.scales: expected a non-empty tuple of positive numbers, e.g. "
                f"(0.75, 1.0, 1.25), received {self.scales!r}."
            )
        object.__setattr__(self, "scales", tuple(float(s) for s in scales))
        if not isinstance(self.flip, bool):
            raise UserInputError(f"gin binding inference.flip: expected True or False, received {self.flip!r}.")
        if crop_size and stride and (stride[0] > crop_size[0] or stride[1] > crop_size[1]):
            raise UserInputError(
                f"gin binding inference.stride: expected at most the window size {crop_size} in each dimension "
                f"(a larger stride leaves pixels no window covers), received {stride}."
            )

    def with_default_crop(self, crop_size: Sequence[int]) -> "InferenceConfig":
        """Returns this config with `crop_size` filled in when unset (callers pass the training crop)."""
        if self.crop_size is not None:
            return self
        return dataclasses.replace(self, crop_size=tuple(int(v) for v in crop_size))

    def window(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """Returns the sliding window's (crop_size, stride), the stride defaulting to two thirds of the crop.

        Raises:
          UserInputError: if no crop size is known.
        """
        if self.crop_size is None:
            raise UserInputError(
                "gin binding inference.crop_size: expected (height, width) of the sliding window with "
                "inference.mode='slide', received None."
            )
        stride = self.stride or tuple(max(1, 2 * size // 3) for size in self.crop_size)
        if stride[0] > self.crop_size[0] or stride[1] > self.crop_size[1]:
            raise UserInputError(
                f"gin binding inference.stride: expected at most the window size {self.crop_size} in each "
                f"dimension, received {stride}."
            )
        return self.crop_size, stride

    def describe(self) -> dict:
        """Returns the settings as JSON-ready values (for eval reports)."""
        description = {"mode": self.mode, "scales": list(self.scales), "flip": self.flip}
        if self.mode == InferenceMode.SLIDE.value:
            crop_size, stride = self.window()
            description.update(crop_size=list(crop_size), stride=list(stride))
        return description


def _static_size(images: tf.Tensor) -> tuple[int, int]:
    height, width = images.shape[1], images.shape[2]
    if height is None or width is None:
        raise ValueError(
            f"inference: expected images with a static height and width (they set the window grid and the scaled "
            f"sizes), received shape {images.shape}."
        )
    return int(height), int(width)


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Start offsets of the windows along one side, as mmsegmentation places them (the last one flush with the end).

    `window` larger than `size` is clipped to `size` by the caller, so a short side has one window.
    """
    count = max(size - window + stride - 1, 0) // stride + 1
    return [min(index * stride, size - window) for index in range(count)]


def slide_logits(
    logits_fn: LogitsFn, images: tf.Tensor, num_classes: int, crop_size: Sequence[int], stride: Sequence[int]
) -> tf.Tensor:
    """Runs `logits_fn` on overlapping windows and averages the logits of every pixel over the windows covering it.

    Windows run one after another in a `tf.while_loop` (one trace of the model, bounded memory); each window's
    logits are scattered back into place, so shapes stay static.

    Args:
      logits_fn: maps images [N, h, w, 3] to scores [N, h, w, num_classes].
      images: [N, H, W, 3] with a static H and W.
      num_classes: the last dimension of the scores.
      crop_size: (height, width) of a window; clipped to the image along a shorter side.
      stride: (height, width) between window starts.

    Returns:
      float32 [N, H, W, num_classes].
    """
    height, width = _static_size(images)
    window_height, window_width = min(crop_size[0], height), min(crop_size[1], width)
    row_starts = window_starts(height, window_height, stride[0])
    col_starts = window_starts(width, window_width, stride[1])
    offsets = [(y, x) for y in row_starts for x in col_starts]
    # The windows form a grid, so the number covering pixel (y, x) is (rows covering y) * (columns covering x):
    # two small vectors instead of an [H, W] constant in the graph.
    row_coverage, col_coverage = np.zeros(height, np.float32), np.zeros(width, np.float32)
    for y in row_starts:
        row_coverage[y : y + window_height] += 1
    for x in col_starts:
        col_coverage[x : x + window_width] += 1
    batch = images.shape[0] if images.shape[0] is not None else tf.shape(images)[0]
    channels = images.shape[3] if images.shape[3] is not None else tf.shape(images)[3]
    offsets_tensor = tf.constant(offsets, tf.int32)

    def add_window(index: tf.Tensor, total: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        offset = offsets_tensor[index]
        window = tf.slice(images, [0, offset[0], offset[1], 0], [batch, window_height, window_width, channels])
        logits = tf.cast(logits_fn(window), tf.float32)
        rows = tf.broadcast_to(tf.range(window_height)[:, tf.newaxis] + offset[0], [window_height, window_width])
        cols = tf.broadcast_to(tf.range(window_width)[tf.newaxis, :] + offset[1], [window_height, window_width])
        # Pixels lead in `total` ([H, W, N, C]) so a window is one scatter of [h, w] rows.
        update = tf.transpose(logits, [1, 2, 0, 3])
        return index + 1, tf.tensor_scatter_nd_add(total, tf.stack([rows, cols], axis=-1), update)

    total = tf.zeros([height, width, batch, num_classes], tf.float32)
    _, total = tf.while_loop(
        lambda index, _: index < len(offsets),
        add_window,
        (tf.constant(0), total),
        # One window at a time: parallel iterations would hold several windows' activations at once.
        parallel_iterations=1,
    )
    coverage = tf.constant(row_coverage)[:, tf.newaxis] * tf.constant(col_coverage)[tf.newaxis, :]
    return tf.transpose(total, [2, 0, 1, 3]) / coverage[tf.newaxis, :, :, tf.newaxis]


def _scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    # Rounded half up, as mmcv rescales (int(size * scale + 0.5)).
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


def predict_logits(logits_fn: LogitsFn, images: tf.Tensor, num_classes: int, config: InferenceConfig) -> tf.Tensor:
    """Returns float32 scores [N, H, W, num_classes] for images [N, H, W, 3], following `config`.

    For every scale the images are resized (bilinear), run whole or in sliding windows, optionally also
    left-right flipped; each result is flipped back and resized back to (H, W), and all are averaged. With
    scales (1.0,) and no flip this is exactly `logits_fn(images)` (whole) or the sliding-window logits.
    """
    height, width = _static_size(images)
    total = None
    count = 0
    for scale in config.scales:
        size = _scaled_size(height, width, scale)
        scaled = images if size == (height, width) else tf.image.resize(images, size, method="bilinear")
        for flip in (False, True) if config.flip else (False,):
            inputs = tf.reverse(scaled, axis=[2]) if flip else scaled
            if config.mode == InferenceMode.SLIDE.value:
                crop_size, stride = config.window()
                logits = slide_logits(logits_fn, inputs, num_classes, crop_size, stride)
            else:
                logits = tf.cast(logits_fn(inputs), tf.float32)
            if flip:
                logits = tf.reverse(logits, axis=[2])
            if size != (height, width):
                logits = tf.image.resize(logits, (height, width), method="bilinear")
            total = logits if total is None else total + logits
            count += 1
    return total if count == 1 else total / count
