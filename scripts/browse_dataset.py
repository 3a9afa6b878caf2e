"""Writes a grid PNG of training examples as the model sees them (after augmentation), with their masks.

Check converted data before spending hours training on it: each cell is image | mask | mask over image,
masks coloured with the dataset's palette (PASCAL VOC's when it has none; ignored pixels light grey).

  python scripts/browse_dataset.py --gin_file=configs/quickstart.gin --output=/tmp/batch.png --num_examples=16

The examples are the first `num_examples` of the training stream the config defines (`run.dataset`,
`input_pipeline.*`, crops, scaling and flips included), i.e. the first batch a run of that config trains on
when `train.global_batch_size` equals `num_examples`.
"""

import sys
from collections.abc import Sequence

import gin
import numpy as np
import tensorflow as tf
from absl import app, flags

from trainer import train_lib  # noqa: F401  (registers every configurable a gin file may name)
from trainer.common.errors import UserInputError
from trainer.core.config import parse_gin
from trainer.data.pipeline import InputPipeline
from trainer.data.synthetic import synthetic_shapes
from trainer.observe import visualize


def browse_dataset(
    gin_files: Sequence[str],
    gin_bindings: Sequence[str],
    output_path: str,
    num_examples: int = 16,
    columns: int = 4,
) -> np.ndarray:
    """Parses the gin config (replacing any parsed before), writes a grid of augmented examples to `output_path`.

    Returns:
      The grid, uint8 [rows * (h + 8) - 8, columns * (3 * w + 4 + 8) - 8, 3] for crops of h×w.

    Raises:
      UserInputError: for a bad config or a non-positive `num_examples`/`columns`.
    """
    if num_examples <= 0:
        raise UserInputError(f"--num_examples: expected a positive int, received {num_examples}.")
    gin.clear_config()
    parse_gin(gin_files, gin_bindings)
    try:
        dataset_fn = gin.query_parameter("run.dataset").scoped_configurable_fn
    except ValueError:
        dataset_fn = synthetic_shapes  # run()'s default
    info = dataset_fn()
    images, labels = next(iter(InputPipeline().train_dataset(info, num_examples)))
    grid = visualize.image_grid(visualize.training_example_cells(images.numpy(), labels.numpy(), info), columns)
    tf.io.write_file(output_path, tf.io.encode_png(grid))
    return grid


def main() -> None:
    # Flags are defined here, not at import, so tests can import `browse_dataset` next to the trainer's flags.
    gin_file = flags.DEFINE_multi_string("gin_file", [], "Gin config file(s), parsed in order.")
    gin_bindings = flags.DEFINE_multi_string("gin_bindings", [], "Gin bindings applied after the files.")
    output = flags.DEFINE_string("output", None, "PNG file to write.", required=True)
    num_examples = flags.DEFINE_integer("num_examples", 16, "Training examples to show.")
    columns = flags.DEFINE_integer("columns", 4, "Examples per row.")

    def _main(argv: list[str]) -> None:
        if len(argv) > 1:
            raise app.UsageError(f"Unexpected positional arguments: {argv[1:]}.")
        try:
            grid = browse_dataset(gin_file.value, gin_bindings.value, output.value, num_examples.value, columns.value)
        except UserInputError as error:
            sys.exit(f"error: {error}")
        print(f"Wrote {output.value} ({grid.shape[1]}x{grid.shape[0]} pixels, {num_examples.value} examples).")

    app.run(_main)


if __name__ == "__main__":
    main()
