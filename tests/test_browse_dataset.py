"""scripts/browse_dataset.py writes a grid PNG of augmented training examples from a gin config."""

import importlib.util
import os

import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import REPO_ROOT, SMOKE_GIN
from trainer.common.errors import UserInputError
from trainer.common.images import IGNORE_COLOR, voc_palette
from trainer.observe import visualize

pytestmark = pytest.mark.usefixtures("clear_gin")

SMOKE_CROP = 48  # configs/smoke.gin


def _load_script():
    path = os.path.join(REPO_ROOT, "scripts", "browse_dataset.py")
    spec = importlib.util.spec_from_file_location("browse_dataset", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_writes_a_png_grid_of_the_expected_size(tmp_path):
    browse = _load_script()
    output = str(tmp_path / "grid.png")
    bindings = [f"synthetic_shapes.data_dir = '{tmp_path / 'data'}'"]
    grid = browse.browse_dataset([SMOKE_GIN], bindings, output, num_examples=5, columns=2)
    png = tf.io.decode_png(tf.io.read_file(output)).numpy()
    np.testing.assert_array_equal(png, grid)
    cell_width = 3 * SMOKE_CROP + 2 * visualize.PANEL_GAP
    rows, columns = 3, 2  # 5 examples, 2 per row
    assert png.shape == (
        rows * SMOKE_CROP + (rows - 1) * visualize.CELL_GAP,
        columns * cell_width + (columns - 1) * visualize.CELL_GAP,
        3,
    )
    # Each mask panel uses only palette colours (classes 0-4) and the ignore colour.
    palette = voc_palette()
    allowed = {tuple(palette[i]) for i in range(5)} | {IGNORE_COLOR}
    mask = png[:SMOKE_CROP, SMOKE_CROP + visualize.PANEL_GAP : 2 * SMOKE_CROP + visualize.PANEL_GAP]
    assert {tuple(color) for color in mask.reshape(-1, 3)} <= allowed
    # The empty sixth cell is white.
    assert (png[-SMOKE_CROP:, -cell_width:] == 255).all()


def test_bad_arguments_are_config_errors(tmp_path):
    browse = _load_script()
    with pytest.raises(UserInputError, match="--num_examples"):
        browse.browse_dataset([SMOKE_GIN], [], str(tmp_path / "grid.png"), num_examples=0)
    with pytest.raises(UserInputError, match="--gin_file"):
        browse.browse_dataset([str(tmp_path / "missing.gin")], [], str(tmp_path / "grid.png"))
