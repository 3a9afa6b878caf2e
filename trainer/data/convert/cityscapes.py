"""Cityscapes fine annotations: `leftImg8bit/<split>/<city>/*_leftImg8bit.png` with `gtFine/..._labelIds.png`.

The 34 label ids map to the 19 classes of the benchmark ("train ids"); every other id (unlabeled, ego
vehicle, rectification border, out of roi, static, dynamic, ground, parking, rail track, guard rail,
bridge, tunnel, polegroup, caravan, trailer, license plate) becomes the ignore label, as in
cityscapesScripts' `labels.py`.
"""

import os

from trainer.common.errors import UserInputError
from trainer.data.convert import reading
from trainer.data.convert.source import BadExample, DatasetSource, SourceExample, SplitSource

IGNORE_LABEL = 255
# (label id, class name, colour) of the 19 evaluated classes, in train-id order.
_CLASSES = (
    (7, "road", (128, 64, 128)),
    (8, "sidewalk", (244, 35, 232)),
    (11, "building", (70, 70, 70)),
    (12, "wall", (102, 102, 156)),
    (13, "fence", (190, 153, 153)),
    (17, "pole", (153, 153, 153)),
    (19, "traffic light", (250, 170, 30)),
    (20, "traffic sign", (220, 220, 0)),
    (21, "vegetation", (107, 142, 35)),
    (22, "terrain", (152, 251, 152)),
    (23, "sky", (70, 130, 180)),
    (24, "person", (220, 20, 60)),
    (25, "rider", (255, 0, 0)),
    (26, "car", (0, 0, 142)),
    (27, "truck", (0, 0, 70)),
    (28, "bus", (0, 60, 100)),
    (31, "train", (0, 80, 100)),
    (32, "motorcycle", (0, 0, 230)),
    (33, "bicycle", (119, 11, 32)),
)
CLASS_NAMES = tuple(name for _, name, _ in _CLASSES)
PALETTE = tuple(colour for _, _, colour in _CLASSES)
LABEL_ID_TO_TRAIN_ID = {label_id: train_id for train_id, (label_id, _, _) in enumerate(_CLASSES)}
_IMAGE_SUFFIX = "_leftImg8bit.png"
_LABEL_SUFFIX = "_gtFine_labelIds.png"


def _example(source_dir: str, image_path: str, split: str) -> SourceExample:
    city = os.path.basename(os.path.dirname(image_path))
    stem = os.path.basename(image_path)[: -len(_IMAGE_SUFFIX)]
    label_path = os.path.join(source_dir, "gtFine", split, city, stem + _LABEL_SUFFIX)
    table = reading.lookup_table(LABEL_ID_TO_TRAIN_ID, default=IGNORE_LABEL)

    def read():
        if not reading.exists(label_path):
            raise BadExample("expected its gtFine labelIds PNG, found none")
        return reading.read_bytes(image_path), table[reading.read_label_png(label_path)]

    return SourceExample(
        key=os.path.relpath(image_path, source_dir), location=f"{image_path} (labels {label_path})", read=read
    )


def cityscapes_source(
    source_dir: str, splits: tuple[str, ...] = ("train", "val"), train_split: str = "train", eval_split: str = "val"
) -> DatasetSource:
    """Describes Cityscapes' fine-annotated splits under `source_dir` (holding `leftImg8bit/` and `gtFine/`).

    The test split's public labels are all "unlabeled", so it is not among the default splits.

    Raises:
      UserInputError: if a split has no images.
    """
    split_sources = []
    for split in splits:
        images = reading.glob(os.path.join(source_dir, "leftImg8bit", split, "*", "*" + _IMAGE_SUFFIX))
        if not images:
            raise UserInputError(
                f"--source_dir: expected Cityscapes images leftImg8bit/{split}/<city>/*{_IMAGE_SUFFIX} under "
                f"{source_dir!r}, found none"
            )
        split_sources.append(SplitSource(split, [_example(source_dir, p, split) for p in images], len(images)))
    return DatasetSource(
        name="cityscapes",
        class_names=CLASS_NAMES,
        ignore_label=IGNORE_LABEL,
        splits=split_sources,
        train_split=train_split,
        eval_split=eval_split,
        palette=PALETTE,
    )
