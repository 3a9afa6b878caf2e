"""A folder of images and a folder of label PNGs matched by file name, with a class list.

Layouts (mmsegmentation's "custom dataset"):
  <source_dir>/images/<split>/<name>.jpg and <source_dir>/masks/<split>/<name>.png — one split per folder;
  <source_dir>/images/<name>.jpg and <source_dir>/masks/<name>.png — split into train and val here.
Masks are single-channel PNGs (greyscale or palette) of class ids; `label_map` rewrites values first
(e.g. "255:1" for 0/255 binary masks). Images are RGB by default; `image_channels` and `image_dtype` take grey,
multi-band and 16-bit images (PNG 8/16-bit, TIFF with tifffile) as they are.
"""

import os

import numpy as np

from trainer.common import validate
from trainer.common.errors import UserInputError
from trainer.data import schema
from trainer.data.convert import reading
from trainer.data.convert.source import DatasetSource, SourceExample, SplitSource

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


def read_class_file(path: str) -> tuple[tuple[str, ...], tuple[tuple[int, int, int], ...] | None]:
    """Reads a class list: one class per line, `name` or `name,r,g,b` (then every line needs a colour).

    Returns:
      The class names and the palette (None when no line has a colour).

    Raises:
      UserInputError: naming the file and line when a line is malformed or only some lines have colours.
    """
    names, colours = [], []
    lines = [line.strip() for line in reading.read_bytes(path).decode("utf-8").splitlines()]
    for number, line in enumerate(lines, start=1):
        if not line or line.startswith("#"):
            continue
        name, *rgb = (part.strip() for part in line.split(","))
        if rgb:
            try:
                colour = tuple(int(v) for v in rgb)
            except ValueError:
                colour = ()
            if len(colour) != 3 or not all(0 <= v <= 255 for v in colour):
                raise UserInputError(
                    f"--class_names_file: {path}:{number}: expected 'name' or 'name,r,g,b' with colours in "
                    f"[0, 255], received {line!r}"
                )
            colours.append(colour)
        names.append(name)
    if not names:
        raise UserInputError(f"--class_names_file: expected at least one class in {path}, received none")
    if colours and len(colours) != len(names):
        raise UserInputError(
            f"--class_names_file: {path}: expected a colour on every line or on none, received {len(colours)} "
            f"colours for {len(names)} classes"
        )
    return tuple(names), (tuple(colours) if colours else None)


def _images(directory: str) -> list[str]:
    return [p for p in reading.glob(os.path.join(directory, "*")) if p.lower().endswith(IMAGE_EXTENSIONS)]


def _example(source_dir: str, image_path: str, mask_dir: str, table: np.ndarray) -> SourceExample:
    stem = os.path.splitext(os.path.basename(image_path))[0]
    mask_path = os.path.join(mask_dir, f"{stem}.png")
    return SourceExample(
        key=os.path.relpath(image_path, source_dir),
        location=f"{image_path} (mask {mask_path})",
        read=lambda: (reading.read_bytes(image_path), table[reading.read_label_png(mask_path)]),
    )


def _check_classes(class_names: tuple[str, ...], ignore_label: int) -> None:
    if not class_names:
        raise UserInputError("--class_names or --class_names_file: expected at least one class, received none")
    if not 0 <= ignore_label <= 255 or ignore_label < len(class_names):
        raise UserInputError(
            f"--ignore_label: expected a value in [{len(class_names)}, 255] (outside the class ids), "
            f"received {ignore_label}"
        )


def _split_folders(source_dir: str, subdirectories: list[str], table: np.ndarray) -> list[SplitSource]:
    """One split per subdirectory of `images/` (its masks in the same subdirectory of `masks/`)."""
    splits = []
    for split in subdirectories:
        image_paths = _images(os.path.join(source_dir, "images", split))
        mask_dir = os.path.join(source_dir, "masks", split)
        examples = [_example(source_dir, p, mask_dir, table) for p in image_paths]
        splits.append(SplitSource(split, examples, len(examples)))
    return splits


def _random_splits(source_dir: str, table: np.ndarray, val_fraction: float, seed: int) -> list[SplitSource]:
    """A flat `images/` split into `train` and `val` by a seeded draw of `val_fraction` of the images."""
    if not 0 < val_fraction < 1:
        raise UserInputError(f"--val_fraction: expected a fraction in (0, 1), received {val_fraction}")
    image_root = os.path.join(source_dir, "images")
    image_paths = _images(image_root)
    if len(image_paths) < 2:
        raise UserInputError(
            f"--source_dir: expected at least 2 images in {image_root} to split into train and val, "
            f"found {len(image_paths)}"
        )
    # A seeded permutation of the sorted names: the same split on every machine and every run.
    order = np.random.default_rng(seed).permutation(len(image_paths))
    num_val = min(max(1, round(val_fraction * len(image_paths))), len(image_paths) - 1)
    val = sorted(image_paths[i] for i in order[:num_val])
    train = sorted(image_paths[i] for i in order[num_val:])
    mask_root = os.path.join(source_dir, "masks")
    return [
        SplitSource(split, [_example(source_dir, p, mask_root, table) for p in paths], len(paths))
        for split, paths in (("train", train), ("val", val))
    ]


def folder_source(
    source_dir: str,
    class_names: tuple[str, ...],
    palette: tuple[tuple[int, int, int], ...] | None = None,
    ignore_label: int = 255,
    label_map: dict[int, int] | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    name: str | None = None,
    train_split: str = "train",
    eval_split: str = "val",
    image_channels: int = 3,
    image_dtype: str = "uint8",
) -> DatasetSource:
    """Describes an `images/` + `masks/` folder pair as a dataset.

    Args:
      source_dir: holds `images/` and `masks/`.
      class_names: one per class id.
      palette: one colour per class, or None (VOC's colour map is used).
      ignore_label: the mask value of pixels to skip.
      label_map: mask value -> class id, applied before validation; other values are kept.
      val_fraction: with a flat `images/`, the fraction (drawn with `seed`) that goes to the `val` split.
      name: the dataset's name; defaults to the directory's.
      image_channels: the channels every image has (3: RGB; grey and RGBA files are made RGB).
      image_dtype: the pixel type every image has, uint8 or uint16.

    Raises:
      UserInputError: if the layout, the classes or the fraction are not as described.
    """
    _check_classes(class_names, ignore_label)
    image_root = os.path.join(source_dir, "images")
    for directory in (image_root, os.path.join(source_dir, "masks")):
        if not reading.isdir(directory):
            raise UserInputError(
                f"--source_dir: expected the folders images/ and masks/ in {source_dir!r}, found no {directory}"
            )
    table = reading.lookup_table(label_map or {})
    subdirectories = sorted(
        d.rstrip("/") for d in reading.listdir(image_root) if reading.isdir(os.path.join(image_root, d))
    )
    if subdirectories:
        splits = _split_folders(source_dir, subdirectories, table)
    else:
        splits = _random_splits(source_dir, table, val_fraction, seed)
    return DatasetSource(
        name=name or os.path.basename(source_dir.rstrip("/")),
        class_names=class_names,
        ignore_label=ignore_label,
        splits=splits,
        train_split=train_split,
        eval_split=eval_split,
        palette=palette,
        image_channels=validate.positive_int("--image_channels", image_channels),
        image_dtype=validate.choice("--image_dtype", image_dtype, schema.IMAGE_DTYPES),
    )
