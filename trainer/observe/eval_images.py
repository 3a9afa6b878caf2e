"""TensorBoard's eval images: fixed validation examples as input | truth | prediction | overlay panels."""

from collections.abc import Callable

import numpy as np
import tensorflow as tf
import tf_keras as keras

from trainer.common import images
from trainer.data.info import DatasetInfo
from trainer.data.pipeline import InputPipeline
from trainer.observe import visualize
from trainer.observe.config import ObserveConfig

EVAL_IMAGES_TAG = "eval_examples"


def write_eval_images(
    writer: tf.summary.SummaryWriter,
    logits_fn: "Callable[[tf.Tensor], tf.Tensor] | keras.Model",
    examples: tuple[np.ndarray, np.ndarray],
    info: DatasetInfo,
    step: int,
    max_size: int,
) -> None:
    """Writes one image per validation example: input | ground truth | prediction | prediction over input.

    Each example has its own tag (`eval_examples/0`, `eval_examples/1`, ...), so TensorBoard's step slider
    shows how that example's prediction evolves; a text summary names the panels and the class colours.

    Args:
      writer: the eval writer (a no-op writer on non-chief tasks).
      logits_fn: a keras model (run with training=False) or a callable images -> logits [N, H, W, C].
      examples: images float32 [N, H, W, 3] in [-1, 1] and labels int32 [N, H, W], the same examples at every
        evaluation (`visualize.fixed_eval_examples`).
      info: the dataset (class names, palette, ignore label).
      step: the global step.
      max_size: the longer side, in pixels, each panel is shrunk to at most (`observe.eval_image_max_size`).
    """
    eval_images, labels = examples
    predictions = visualize.predict_classes(logits_fn, eval_images)
    panels = visualize.eval_panels(eval_images, labels, predictions, info, max_size=max_size)
    with writer.as_default(step=step):
        for index, panel in enumerate(panels):
            tf.summary.image(f"{EVAL_IMAGES_TAG}/{index}", panel[np.newaxis], max_outputs=1)
        tf.summary.text(f"{EVAL_IMAGES_TAG}/legend", legend_markdown(info))
    writer.flush()


def legend_markdown(info: DatasetInfo) -> str:
    """The Markdown table that names the panels and each class's colour."""
    palette = visualize.dataset_palette(info)
    lines = [f"Panels, left to right: {', '.join(visualize.EVAL_PANELS)}.", "", "| class | id | colour (RGB) |"]
    lines.append("|---|---|---|")
    lines += [f"| {name} | {i} | {tuple(int(c) for c in palette[i])} |" for i, name in enumerate(info.class_names)]
    lines.append(f"| ignored ({info.ignore_label}) | | {images.IGNORE_COLOR} |")
    return "\n".join(lines)


class EvalImages:
    """The fixed validation examples shown at every evaluation, read once on first use, and their writer."""

    def __init__(self, input_pipeline: InputPipeline, info: DatasetInfo, config: ObserveConfig):
        self._input_pipeline = input_pipeline
        self._info = info
        self._config = config
        self._examples: tuple[np.ndarray, np.ndarray] | None = None

    def write(
        self, writer: tf.summary.SummaryWriter, logits_fn: "Callable[[tf.Tensor], tf.Tensor] | keras.Model", step: int
    ) -> None:
        """Writes the panels of `logits_fn`'s predictions at `step` (nothing if `observe.num_eval_images` is 0)."""
        if self._config.num_eval_images == 0:
            return
        if self._examples is None:
            self._examples = visualize.fixed_eval_examples(
                self._input_pipeline, self._info, self._config.num_eval_images
            )
        if self._examples is not None:  # None: the dataset has no validation examples
            write_eval_images(writer, logits_fn, self._examples, self._info, step, self._config.eval_image_max_size)
