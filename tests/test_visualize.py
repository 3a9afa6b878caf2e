"""Palettes, colourised label maps and the panel/grid layouts of TensorBoard's eval images and the browser."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from trainer.common.errors import UserInputError
from trainer.common.images import IGNORE_COLOR, colorize, overlay, to_uint8, voc_palette
from trainer.data.info import DatasetInfo
from trainer.observe import visualize

INFO = DatasetInfo(
    name="tiny",
    num_classes=3,
    class_names=("background", "cat", "dog"),
    ignore_label=255,
    train_files=("train.tfrecord",),
    eval_files=("eval.tfrecord",),
    num_train_examples=4,
    num_eval_examples=4,
)


def test_voc_palette_matches_pascal_vocs_label_colours():
    palette = voc_palette()
    assert palette.shape == (256, 3) and palette.dtype == np.uint8
    # From VOC's devkit (VOClabelcolormap): background, aeroplane, bicycle, bird, ..., person (15), void (255).
    assert palette[0].tolist() == [0, 0, 0]
    assert palette[1].tolist() == [128, 0, 0]
    assert palette[2].tolist() == [0, 128, 0]
    assert palette[3].tolist() == [128, 128, 0]
    assert palette[15].tolist() == [192, 128, 128]
    assert palette[255].tolist() == list(IGNORE_COLOR)
    assert len({tuple(color) for color in palette}) == 256


def test_dataset_palette_comes_first_and_voc_fills_the_rest():
    info = dataclasses.replace(INFO)
    object.__setattr__(info, "palette", ((10, 20, 30), (40, 50, 60)))
    palette = visualize.dataset_palette(info)
    assert palette[0].tolist() == [10, 20, 30] and palette[1].tolist() == [40, 50, 60]
    assert palette[2].tolist() == [0, 128, 0]
    # A DatasetInfo without the attribute (or with None) gets VOC's palette.
    np.testing.assert_array_equal(visualize.dataset_palette(INFO), voc_palette())


def test_a_malformed_dataset_palette_is_a_config_error():
    info = dataclasses.replace(INFO)
    object.__setattr__(info, "palette", ((10, 20, 300),))
    with pytest.raises(UserInputError, match="expected \\(r, g, b\\) triples"):
        visualize.dataset_palette(info)


def test_colorize_paints_ignored_pixels_with_the_void_colour_whatever_the_ignore_label():
    palette = voc_palette()
    labels = np.array([[0, 1], [2, -1]])
    colors = colorize(labels, palette, ignore_label=-1)
    assert colors.dtype == np.uint8 and colors.shape == (2, 2, 3)
    assert colors[0, 1].tolist() == [128, 0, 0]
    assert colors[1, 1].tolist() == list(IGNORE_COLOR)


def test_image_to_uint8_inverts_the_input_scaling():
    pixels = np.array([0, 1, 127, 128, 255], np.uint8)
    np.testing.assert_array_equal(to_uint8(pixels / 127.5 - 1.0), pixels)


def test_eval_panels_put_four_panels_side_by_side():
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, size=(2, 8, 6, 3)).astype(np.float32)
    labels = rng.integers(0, 3, size=(2, 8, 6))
    labels[:, 0] = 255
    predictions = rng.integers(0, 3, size=(2, 8, 6))
    panels = visualize.eval_panels(images, labels, predictions, INFO)
    assert panels.shape == (2, 8, 4 * 6 + 3 * visualize.PANEL_GAP, 3)
    step = 6 + visualize.PANEL_GAP
    palette = voc_palette()
    np.testing.assert_array_equal(panels[1, :, :6], to_uint8(images[1]))
    np.testing.assert_array_equal(panels[1, :, step : step + 6], colorize(labels[1], palette, 255))
    prediction_colors = colorize(predictions[1], palette, 255)
    np.testing.assert_array_equal(panels[1, :, 2 * step : 2 * step + 6], prediction_colors)
    expected_overlay = overlay(to_uint8(images[1]), prediction_colors)
    np.testing.assert_array_equal(panels[1, :, 3 * step :], expected_overlay)


def test_eval_panels_shrink_large_examples_to_max_size():
    images = np.zeros((1, 40, 20, 3), np.float32)
    labels = np.ones((1, 40, 20), np.int64)
    panels = visualize.eval_panels(images, labels, labels, INFO, max_size=10)
    assert panels.shape == (1, 10, 4 * 5 + 3 * visualize.PANEL_GAP, 3)
    # Label colours are resized nearest-neighbour: no blended colours appear.
    assert (panels[0, :, 5 + visualize.PANEL_GAP : 10 + visualize.PANEL_GAP] == [128, 0, 0]).all()


def test_image_grid_lays_out_rows_and_pads_the_last_one():
    cells = [np.full((4, 5, 3), i, np.uint8) for i in range(5)]
    grid = visualize.image_grid(cells, columns=3)
    gap = visualize.CELL_GAP
    assert grid.shape == (2 * 4 + gap, 3 * 5 + 2 * gap, 3)
    assert (grid[4 + gap :, 2 * (5 + gap) :] == 255).all()  # the missing sixth cell is white
    assert (grid[4 + gap :, 5 + gap : 2 * 5 + gap] == 4).all()
    with pytest.raises(UserInputError, match="columns"):
        visualize.image_grid(cells, columns=0)


def test_training_example_cells_show_image_mask_and_overlay():
    images = np.zeros((2, 4, 4, 3), np.float32)
    labels = np.full((2, 4, 4), 2)
    cells = visualize.training_example_cells(images, labels, INFO)
    assert len(cells) == 2 and cells[0].shape == (4, 3 * 4 + 2 * visualize.PANEL_GAP, 3)
    assert (cells[0][:, 4 + visualize.PANEL_GAP : 8 + visualize.PANEL_GAP] == [0, 128, 0]).all()


def test_predict_classes_takes_a_plain_logits_function():
    images = np.zeros((3, 4, 5, 3), np.float32)
    images[1] += 0.5

    def logits_fn(batch):
        # Class 2 wherever the image is bright, else class 0; one call per example.
        assert batch.shape[0] == 1
        bright = tf.cast(batch[..., 0] > 0.25, tf.float32)
        return tf.stack([1.0 - bright, tf.zeros_like(bright), bright], axis=-1)

    predictions = visualize.predict_classes(logits_fn, images)
    assert predictions.shape == (3, 4, 5) and predictions.dtype == np.int32
    assert (predictions[1] == 2).all() and (predictions[[0, 2]] == 0).all()
