"""PASCAL VOC 2012 (`JPEGImages/`, `SegmentationClass/`, `ImageSets/Segmentation/`), optionally with SBD.

The SBD masks (Hariharan et al.) extend the 1,464 training images to the 10,582 of the "trainaug" split:
SBD's train and val images and VOC's train images, less VOC's val images. They come as SBD's own `cls/*.mat`
files (read with scipy, when it is installed) or already converted to label PNGs (as in the widely shared
`SegmentationClassAug`).
"""

import importlib.util
import os

import numpy as np

from trainer.common.errors import UserInputError
from trainer.data.convert import reading
from trainer.data.convert.source import DatasetSource, SourceExample, SplitSource

CLASS_NAMES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
# The "void" outline around objects and difficult regions in SegmentationClass.
IGNORE_LABEL = 255
SPLITS = ("train", "val", "trainval")
TRAINAUG = "trainaug"


def find_root(source_dir: str) -> str:
    """Returns the VOC2012 directory under `source_dir` (itself, `VOC2012/` or `VOCdevkit/VOC2012/`).

    Raises:
      UserInputError: if none of them has `JPEGImages/` and `SegmentationClass/`.
    """
    return reading.find_root(
        source_dir,
        ["VOC2012", os.path.join("VOCdevkit", "VOC2012")],
        ["JPEGImages", "SegmentationClass"],
        "a PASCAL VOC 2012 directory with JPEGImages/ and SegmentationClass/",
    )


def _read_ids(path: str) -> list[str]:
    return [line.strip() for line in reading.read_bytes(path).decode("utf-8").splitlines() if line.strip()]


def _voc_example(root: str, image_id: str, mask_path: str, read_mask) -> SourceExample:
    image_path = os.path.join(root, "JPEGImages", f"{image_id}.jpg")
    return SourceExample(
        key=f"{image_id}.jpg",
        location=f"{image_path} (mask {mask_path})",
        read=lambda: (reading.read_bytes(image_path), read_mask(mask_path)),
    )


def _read_sbd_mat(path: str) -> np.ndarray:
    import scipy.io  # Optional: only SBD's .mat masks need it (checked by _sbd_masks before any reading).

    with reading.gfile_open(path) as f:
        mat = scipy.io.loadmat(f, squeeze_me=True, struct_as_record=False)
    return np.asarray(mat["GTcls"].Segmentation, dtype=np.uint8)


def _sbd_masks(sbd_dir: str) -> tuple[dict[str, str], object]:
    """Returns {image id: mask path} of the SBD masks under `sbd_dir` and the function that reads one.

    Raises:
      UserInputError: if `sbd_dir` holds neither `cls/*.mat` nor `*.png` masks, or holds .mat files and scipy
        is not installed.
    """
    mat_files = reading.glob(os.path.join(sbd_dir, "cls", "*.mat"))
    if mat_files:
        if importlib.util.find_spec("scipy") is None:
            raise UserInputError(
                f"--sbd_dir: reading SBD's .mat masks in {sbd_dir}/cls needs scipy, which is not installed. "
                "Install it (pip install scipy), or pass --sbd_dir a directory of the SBD masks as label PNGs "
                "(e.g. SegmentationClassAug)."
            )
        masks = {os.path.splitext(os.path.basename(f))[0]: f for f in mat_files}
        # SBD's train.txt and val.txt list its 11,355 annotated images; without them every .mat file counts.
        listed = [os.path.join(sbd_dir, f"{name}.txt") for name in ("train", "val")]
        if all(reading.exists(path) for path in listed):
            ids = {image_id for path in listed for image_id in _read_ids(path)}
            masks = {image_id: path for image_id, path in masks.items() if image_id in ids}
        return masks, _read_sbd_mat
    png_files = reading.glob(os.path.join(sbd_dir, "*.png"))
    if png_files:
        return {os.path.splitext(os.path.basename(f))[0]: f for f in png_files}, reading.read_label_png
    raise UserInputError(
        f"--sbd_dir: expected SBD's cls/*.mat files or a directory of *.png label maps, found neither in {sbd_dir!r}"
    )


def _split_ids(root: str) -> dict[str, list[str]]:
    """Returns {split: image ids} of the lists in `ImageSets/Segmentation/` (train and val required)."""
    split_ids = {}
    for split in SPLITS:
        path = os.path.join(root, "ImageSets", "Segmentation", f"{split}.txt")
        if reading.exists(path):
            split_ids[split] = _read_ids(path)
    for required in ("train", "val"):
        if required not in split_ids:
            raise UserInputError(
                f"--source_dir: expected ImageSets/Segmentation/{required}.txt under {root!r}, found "
                f"{sorted(split_ids) or 'no split lists'}"
            )
    return split_ids


def _voc_mask_example(root: str, image_id: str) -> SourceExample:
    """The example of `image_id` with its mask from VOC's `SegmentationClass/`."""
    mask_path = os.path.join(root, "SegmentationClass", f"{image_id}.png")
    return _voc_example(root, image_id, mask_path, reading.read_label_png)


def _trainaug(root: str, split_ids: dict[str, list[str]], sbd_dir: str) -> SplitSource:
    """SBD's train and val images and VOC's train images, less VOC's val images."""
    sbd_masks, read_sbd = _sbd_masks(sbd_dir)
    val_ids = set(split_ids["val"])
    voc_annotated = set(split_ids["train"]) | val_ids | set(split_ids.get("trainval", ()))
    trainaug_ids = sorted((set(sbd_masks) | set(split_ids["train"])) - val_ids)
    examples = [
        # VOC's own masks where there are some: they carry the void outline that SBD's lack.
        _voc_mask_example(root, image_id)
        if image_id in voc_annotated
        else _voc_example(root, image_id, sbd_masks[image_id], read_sbd)
        for image_id in trainaug_ids
    ]
    return SplitSource(TRAINAUG, examples, len(examples))


def voc_source(
    source_dir: str,
    sbd_dir: str | None = None,
    train_split: str | None = None,
    eval_split: str = "val",
) -> DatasetSource:
    """Describes PASCAL VOC 2012's segmentation splits (and trainaug with `sbd_dir`).

    Args:
      source_dir: the VOC2012 directory, or a directory above it (`VOCdevkit/VOC2012` is found).
      sbd_dir: SBD's `dataset/` directory (with `cls/*.mat`), or a directory of SBD label PNGs.
      train_split: the JSON's training split; `trainaug` with `sbd_dir`, else `train`.
      eval_split: the JSON's evaluation split.

    Raises:
      UserInputError: if the layout is not found.
    """
    root = find_root(source_dir)
    split_ids = _split_ids(root)
    splits = [
        SplitSource(split, [_voc_mask_example(root, image_id) for image_id in ids], len(ids))
        for split, ids in split_ids.items()
    ]
    if sbd_dir:
        splits.append(_trainaug(root, split_ids, sbd_dir))
    return DatasetSource(
        name="pascal_voc_2012",
        class_names=CLASS_NAMES,
        ignore_label=IGNORE_LABEL,
        splits=splits,
        train_split=train_split or (TRAINAUG if sbd_dir else "train"),
        eval_split=eval_split,
    )
