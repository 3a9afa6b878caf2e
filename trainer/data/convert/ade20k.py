"""ADE20K SceneParsing (ADEChallengeData2016): `images/{training,validation}/*.jpg` and `annotations/.../*.png`.

Annotations hold 0 for "other objects" and 1..150 for the benchmark's classes: 0 becomes the ignore label
and the classes shift down by one to 0..149 (mmsegmentation's `reduce_zero_label`).
"""

import os

from trainer.common.errors import UserInputError
from trainer.data.convert import reading
from trainer.data.convert.source import DatasetSource, SourceExample, SplitSource

IGNORE_LABEL = 255
# The first name of each class in the benchmark's objectInfo150 list, in class order.
CLASS_NAMES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand",
    "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle",
    "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
    "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake",
    "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray",
    "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass",
    "clock", "flag",
)  # fmt: skip
# Output split name -> the directory it is read from.
SPLIT_DIRECTORIES = {"train": "training", "val": "validation"}
# 0 -> ignore, k -> k - 1; values above 150 are not ADE20K classes and stay out of range (k - 1 >= 150), so
# validation reports them instead of hiding them.
_TABLE = reading.lookup_table({0: IGNORE_LABEL, **{k: k - 1 for k in range(1, 256)}})


def find_root(source_dir: str) -> str:
    """Returns the directory under `source_dir` holding `images/` and `annotations/` (itself or
    `ADEChallengeData2016/`).

    Raises:
      UserInputError: if neither has them.
    """
    return reading.find_root(
        source_dir,
        ["ADEChallengeData2016"],
        ["images", "annotations"],
        "ADE20K SceneParsing's images/ and annotations/",
    )


def _example(root: str, image_path: str, directory: str) -> SourceExample:
    stem = os.path.splitext(os.path.basename(image_path))[0]
    label_path = os.path.join(root, "annotations", directory, f"{stem}.png")
    return SourceExample(
        key=os.path.relpath(image_path, root),
        location=f"{image_path} (annotation {label_path})",
        read=lambda: (reading.read_bytes(image_path), _TABLE[reading.read_label_png(label_path)]),
    )


def ade20k_source(source_dir: str, train_split: str = "train", eval_split: str = "val") -> DatasetSource:
    """Describes ADE20K SceneParsing's training and validation splits (as `train` and `val`).

    Raises:
      UserInputError: if the layout is not found or a split has no images.
    """
    root = find_root(source_dir)
    splits = []
    for split, directory in SPLIT_DIRECTORIES.items():
        images = reading.glob(os.path.join(root, "images", directory, "*.jpg"))
        if not images:
            raise UserInputError(f"--source_dir: expected images/{directory}/*.jpg under {root!r}, found none")
        splits.append(SplitSource(split, [_example(root, p, directory) for p in images], len(images)))
    # ADE20K publishes no palette of its own: the default, VOC's colour map, gives its 150 classes distinct colours.
    return DatasetSource(
        name="ade20k",
        class_names=CLASS_NAMES,
        ignore_label=IGNORE_LABEL,
        splits=splits,
        train_split=train_split,
        eval_split=eval_split,
    )
