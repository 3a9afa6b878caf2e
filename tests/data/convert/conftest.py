"""Tiny fake source trees in each layout the converters read, with the arrays they should convert to."""

import dataclasses
import os
import types

import numpy as np
import pytest
from PIL import Image

from trainer.common import images
from trainer.data.convert import reading


@dataclasses.dataclass
class FakeTree:
    """A generated source tree: its root and, per split, {stored key: (image file, expected label map)}."""

    root: str
    expected: dict[str, dict[str, tuple[str, np.ndarray]]]


def random_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    # Smooth gradients plus noise: JPEG-compressible but never constant.
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 256], axis=-1)
    return np.clip(base + rng.integers(-20, 21, size=base.shape), 0, 255).astype(np.uint8)


def blocky_labels(rng: np.random.Generator, height: int, width: int, values) -> np.ndarray:
    """Labels in 8x8 blocks drawn from `values`."""
    blocks = rng.choice(np.asarray(values), size=(-(-height // 8), -(-width // 8)))
    return np.kron(blocks, np.ones((8, 8), np.int64))[:height, :width].astype(np.uint8)


def save_image(path: str, image: np.ndarray, quality: int = 90) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if path.endswith(".jpg"):
        Image.fromarray(image).save(path, quality=quality)
    else:
        Image.fromarray(image).save(path)


def save_label_png(path: str, label: np.ndarray, palette=None) -> None:
    """Saves a label map as a greyscale PNG, or a palette PNG (as VOC's) when `palette` is given."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if palette is None:
        Image.fromarray(label).save(path)
        return
    image = Image.frombytes("P", (label.shape[1], label.shape[0]), np.ascontiguousarray(label).tobytes())
    image.putpalette([v for colour in palette for v in colour])
    image.save(path)


@pytest.fixture
def fake_files() -> types.SimpleNamespace:
    """The helpers that write fake images and label PNGs, for tests that build their own trees."""
    return types.SimpleNamespace(
        random_image=random_image, blocky_labels=blocky_labels, save_image=save_image, save_label_png=save_label_png
    )


def _voc_label(rng, height, width):
    label = blocky_labels(rng, height, width, range(21))
    label[0, :] = 255  # VOC's void outline
    return label


@pytest.fixture
def fake_voc(tmp_path) -> FakeTree:
    """VOC2012 under VOCdevkit/, 3 train and 2 val images, sizes differing per image."""
    rng = np.random.default_rng(0)
    root = tmp_path / "VOCdevkit" / "VOC2012"
    ids = {"train": ["2007_000032", "2007_000039", "2008_000002"], "val": ["2007_000033", "2009_000001"]}
    sizes = [(40, 32), (32, 48), (36, 36), (24, 40), (48, 24)]
    expected = {"train": {}, "val": {}, "trainval": {}}
    palette = images.voc_palette(256).tolist()
    for (split, split_ids), offset in (((s, i), k) for k, (s, i) in enumerate(ids.items())):
        for n, image_id in enumerate(split_ids):
            height, width = sizes[(3 * offset + n) % len(sizes)]
            image_path = str(root / "JPEGImages" / f"{image_id}.jpg")
            save_image(image_path, random_image(rng, height, width))
            label = _voc_label(rng, height, width)
            save_label_png(str(root / "SegmentationClass" / f"{image_id}.png"), label, palette)
            expected[split][f"{image_id}.jpg"] = (image_path, label)
            expected["trainval"][f"{image_id}.jpg"] = (image_path, label)
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    for split in ("train", "val"):
        (lists / f"{split}.txt").write_text("\n".join(ids[split]) + "\n")
    (lists / "trainval.txt").write_text("\n".join(ids["train"] + ids["val"]) + "\n")
    return FakeTree(str(tmp_path), expected)


@pytest.fixture
def fake_sbd_png(fake_voc, tmp_path) -> tuple[FakeTree, str]:
    """SBD masks as PNGs: two images only SBD annotates, one VOC train and one VOC val image.

    Returns the VOC tree with a `trainaug` split expected, and the SBD mask directory.
    """
    rng = np.random.default_rng(1)
    sbd_dir = tmp_path / "SegmentationClassAug"
    voc_root = tmp_path / "VOCdevkit" / "VOC2012"
    trainaug = dict(fake_voc.expected["train"])
    for image_id in ("2010_000001", "2011_000002"):
        image_path = str(voc_root / "JPEGImages" / f"{image_id}.jpg")
        save_image(image_path, random_image(rng, 32, 40))
        label = blocky_labels(rng, 32, 40, range(21))
        save_label_png(str(sbd_dir / f"{image_id}.png"), label)
        trainaug[f"{image_id}.jpg"] = (image_path, label)
    # SBD masks for a VOC train image (VOC's own mask wins) and a VOC val image (left out of trainaug).
    save_label_png(str(sbd_dir / "2007_000032.png"), np.zeros((40, 32), np.uint8))
    save_label_png(str(sbd_dir / "2007_000033.png"), np.zeros((24, 40), np.uint8))
    fake_voc.expected["trainaug"] = trainaug
    return fake_voc, str(sbd_dir)


@pytest.fixture
def fake_cityscapes(tmp_path) -> FakeTree:
    """Two cities in train, one in val; labelIds over all 34 ids (and 255, which is no Cityscapes id)."""
    from trainer.data.convert import cityscapes

    rng = np.random.default_rng(2)
    table = reading.lookup_table(cityscapes.LABEL_ID_TO_TRAIN_ID, default=255)
    expected = {"train": {}, "val": {}}
    for split, city, frame in (("train", "aachen", 19), ("train", "bochum", 7), ("val", "lindau", 3)):
        stem = f"{city}_000000_{frame:06d}"
        key = os.path.join("leftImg8bit", split, city, f"{stem}_leftImg8bit.png")
        image_path = str(tmp_path / key)
        save_image(image_path, random_image(rng, 32, 64))
        label_ids = blocky_labels(rng, 32, 64, list(range(34)) + [255])
        save_label_png(str(tmp_path / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png"), label_ids)
        expected[split][key] = (image_path, table[label_ids])
    return FakeTree(str(tmp_path), expected)


@pytest.fixture
def fake_ade20k(tmp_path) -> FakeTree:
    """ADEChallengeData2016 with 2 training and 1 validation image; annotations over 0..150."""
    rng = np.random.default_rng(3)
    root = tmp_path / "ADEChallengeData2016"
    expected = {"train": {}, "val": {}}
    for split, directory, name in (
        ("train", "training", "ADE_train_00000001"),
        ("train", "training", "ADE_train_00000002"),
        ("val", "validation", "ADE_val_00000001"),
    ):
        key = os.path.join("images", directory, f"{name}.jpg")
        save_image(str(root / key), random_image(rng, 40, 48))
        annotation = blocky_labels(rng, 40, 48, range(151))
        save_label_png(str(root / "annotations" / directory / f"{name}.png"), annotation)
        label = np.where(annotation == 0, 255, annotation.astype(np.int64) - 1).astype(np.uint8)
        expected[split][key] = (str(root / key), label)
    return FakeTree(str(tmp_path), expected)


@pytest.fixture
def fake_folder(tmp_path) -> FakeTree:
    """images/{train,val}/ and masks/{train,val}/ of 3 classes, with PNG and JPEG images."""
    rng = np.random.default_rng(4)
    expected = {"train": {}, "val": {}}
    for split, name, extension in (("train", "a", ".png"), ("train", "b", ".jpg"), ("val", "c", ".png")):
        key = os.path.join("images", split, name + extension)
        save_image(str(tmp_path / key), random_image(rng, 24, 32))
        label = blocky_labels(rng, 24, 32, [0, 1, 2, 255])
        save_label_png(str(tmp_path / "masks" / split / f"{name}.png"), label)
        expected[split][key] = (str(tmp_path / key), label)
    return FakeTree(str(tmp_path), expected)
