"""Colourised label maps and image panels: what TensorBoard's eval images and the dataset browser show.

Everything here works on numpy arrays (uint8 RGB out), so it can be used on any host, in a notebook or a test.
Label maps are coloured with the dataset's palette (`DatasetInfo.palette`) or, when it has none, the PASCAL
VOC palette; ignored pixels get VOC's "void" colour whatever the ignore label is.
"""

import math
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras

from trainer.common.errors import UserInputError
from trainer.common.images import colorize, displayable, overlay, to_uint8, voc_palette
from trainer.data.info import DatasetInfo
from trainer.data.pipeline import InputPipeline

# What the four panels of an eval example show, left to right.
EVAL_PANELS = ("input", "ground truth", "prediction", "prediction over input")
# White space between the panels of one example, and (wider, to tell examples apart) between grid cells.
PANEL_GAP = 2
CELL_GAP = 8
_GAP_VALUE = 255


def dataset_palette(info: DatasetInfo) -> np.ndarray:
    """Returns a uint8 [max(num_classes, 256), 3] palette: the dataset's own colours first, VOC's for the rest.

    Raises:
      UserInputError: if the dataset's palette has entries that are not three ints in [0, 255].
    """
    palette = voc_palette(max(256, info.num_classes))
    own = getattr(info, "palette", None)
    if own:
        colors = np.asarray(own)
        if colors.ndim != 2 or colors.shape[1] != 3 or colors.min() < 0 or colors.max() > 255:
            raise UserInputError(
                f"DatasetInfo(name={info.name!r}).palette: expected (r, g, b) triples of ints in [0, 255], "
                f"received {own!r}."
            )
        count = min(len(colors), len(palette))
        palette[:count] = colors[:count].astype(np.uint8)
    return palette


def concat_with_gaps(panels: Sequence[np.ndarray], axis: int, gap: int = PANEL_GAP) -> np.ndarray:
    """Concatenates same-sized uint8 images along `axis` (0 rows, 1 columns) with white `gap`-pixel bands."""
    shape = list(panels[0].shape)
    shape[axis] = gap
    band = np.full(shape, _GAP_VALUE, np.uint8)
    pieces = []
    for index, panel in enumerate(panels):
        if index:
            pieces.append(band)
        pieces.append(panel)
    return np.concatenate(pieces, axis=axis)


def image_grid(cells: Sequence[np.ndarray], columns: int, gap: int = CELL_GAP) -> np.ndarray:
    """Lays same-sized uint8 [h, w, 3] cells out row by row, `columns` per row; missing cells are white."""
    if columns <= 0:
        raise UserInputError(f"image grid: expected a positive number of columns, received {columns}.")
    columns = min(columns, len(cells))
    blank = np.full_like(cells[0], _GAP_VALUE)
    rows = []
    for row in range(math.ceil(len(cells) / columns)):
        row_cells = list(cells[row * columns : (row + 1) * columns])
        row_cells += [blank] * (columns - len(row_cells))
        rows.append(concat_with_gaps(row_cells, axis=1, gap=gap))
    return concat_with_gaps(rows, axis=0, gap=gap)


def _display_size(height: int, width: int, max_size: int) -> tuple[int, int]:
    scale = min(1.0, max_size / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def _resize(images: np.ndarray, size: tuple[int, int], nearest: bool) -> np.ndarray:
    if tuple(images.shape[1:3]) == size:
        return images
    method = tf.image.ResizeMethod.NEAREST_NEIGHBOR if nearest else tf.image.ResizeMethod.AREA
    resized = tf.image.resize(images, size, method=method).numpy()
    return np.clip(np.round(resized), 0, 255).astype(np.uint8)


def eval_panels(
    images: np.ndarray,
    labels: np.ndarray,
    predictions: np.ndarray,
    info: DatasetInfo,
    max_size: int = 512,
) -> np.ndarray:
    """Returns uint8 [N, h, 4w + 3 gaps, 3]: per example the `EVAL_PANELS` side by side.

    Args:
      images: float [N, H, W, C], RGB in [-1, 1] (other inputs are shown as `images.displayable` makes them).
      labels: int [N, H, W] ground truth (ignored pixels equal `info.ignore_label`).
      predictions: int [N, H, W] predicted class ids.
      info: the dataset (palette, ignore label).
      max_size: each panel's longer side is shrunk to at most this many pixels (area for the image,
        nearest-neighbour for label colours), so large eval images do not bloat the event files.
    """
    palette = dataset_palette(info)
    size = _display_size(images.shape[1], images.shape[2], max_size)
    inputs = _resize(displayable(images), size, nearest=False)
    truth = _resize(colorize(labels, palette, info.ignore_label), size, nearest=True)
    predicted = _resize(colorize(predictions, palette, info.ignore_label), size, nearest=True)
    strips = [
        concat_with_gaps([inputs[i], truth[i], predicted[i], overlay(inputs[i], predicted[i])], axis=1)
        for i in range(len(inputs))
    ]
    return np.stack(strips)


def predict_classes(logits_fn: "Callable[[tf.Tensor], tf.Tensor] | keras.Model", images: np.ndarray) -> np.ndarray:
    """Returns the argmax class map int32 [N, H, W] of `logits_fn(images)` (a keras model runs in inference mode).

    One example at a time: this runs next to training, whose memory is in use, on images as large as the eval
    size.
    """

    def predict(image: np.ndarray) -> np.ndarray:
        batch = tf.convert_to_tensor(image[np.newaxis])
        logits = logits_fn(batch, training=False) if isinstance(logits_fn, keras.Model) else logits_fn(batch)
        return tf.argmax(logits, axis=-1, output_type=tf.int32).numpy()

    return np.concatenate([predict(image) for image in images])


def fixed_eval_examples(
    input_pipeline: InputPipeline, info: DatasetInfo, count: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """Returns the first `count` validation examples (images float32 [-1, 1], labels int32), or None if count is 0.

    The eval split is read in a fixed order, so these are the same examples at every evaluation and in every
    run of the same dataset: progress can be followed image by image.
    """
    count = min(count, info.num_eval_examples)
    if count <= 0:
        return None
    dataset = input_pipeline.eval_dataset(info, global_batch_size=count)
    images, labels = next(iter(dataset.take(1)))
    return images.numpy(), labels.numpy()


def training_example_cells(images: np.ndarray, labels: np.ndarray, info: DatasetInfo) -> list[np.ndarray]:
    """Returns one uint8 cell per training example: image | colourised mask | mask over image."""
    palette = dataset_palette(info)
    inputs = to_uint8(images)
    masks = colorize(labels, palette, info.ignore_label)
    return [concat_with_gaps([inputs[i], masks[i], overlay(inputs[i], masks[i])], axis=1) for i in range(len(inputs))]
