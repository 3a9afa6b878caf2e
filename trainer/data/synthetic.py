"""An embedded, procedurally generated segmentation dataset of textured shapes on cluttered backgrounds.

Classes differ only in shape: every class draws its textures and colours from the same distributions, so a
model has to learn geometry, not colour. Boundaries between labels carry a thin ignore band, as PASCAL VOC's
void outlines do, so the task is learnable to a high mIoU with a small network.
"""

import os
import time
import uuid

import gin
import numpy as np
import tensorflow as tf
from absl import logging

from trainer.common import validate
from trainer.common.errors import UserInputError
from trainer.data import info as info_lib
from trainer.data import schema

CLASS_NAMES = ("background", "disk", "square", "triangle", "cross")
IGNORE_LABEL = 255

_MIN_SHAPES, _MAX_SHAPES = 2, 4
# Shape extent as a fraction of the image side; large enough that a small CNN sees the whole outline.
_MIN_EXTENT, _MAX_EXTENT = 0.2, 0.45
_TEXTURES = ("solid", "stripes", "checker", "noise")
# RGB distances: a shape's colour differs from what lies behind it by at least _MIN_CONTRAST, and its
# texture's two colours by at most _TEXTURE_CONTRAST per channel.
_MIN_CONTRAST = 100.0
_TEXTURE_CONTRAST = 35.0
# Part of the cache directory name: bump it whenever render_example changes, so stale data is not reused.
GENERATOR_VERSION = 3


def _grid(image_size: int) -> tuple[np.ndarray, np.ndarray]:
    # Pixel centres, so shapes are symmetric about their centre.
    coords = np.arange(image_size, dtype=np.float32) + 0.5
    return np.meshgrid(coords, coords, indexing="xy")


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0.0, 255.0, size=3).astype(np.float32)


def _contrasting_colour(rng: np.random.Generator, behind: np.ndarray) -> np.ndarray:
    """Returns a random colour at least `_MIN_CONTRAST` (RGB distance) away from the colour `behind`."""
    for _ in range(32):
        colour = _random_colour(rng)
        if np.linalg.norm(colour - behind) >= _MIN_CONTRAST:
            return colour
    # Unreachable in practice (a random colour is that far from most colours); the opposite colour always is.
    return (255.0 - behind).astype(np.float32)


def _texture(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, behind: np.ndarray) -> np.ndarray:
    """Returns a float32 [S, S, 3] texture standing out from the mean colour `behind` it.

    Every class draws from the same distribution, so colour and texture carry no class information; the
    texture's own contrast is kept below the contrast to the background so that outlines, not stripes or
    checks, are the strongest edges.
    """
    colour_a = _contrasting_colour(rng, behind)
    colour_b = np.clip(colour_a + rng.uniform(-_TEXTURE_CONTRAST, _TEXTURE_CONTRAST, size=3), 0.0, 255.0)
    colour_b = colour_b.astype(np.float32)
    kind = _TEXTURES[rng.integers(len(_TEXTURES))]
    if kind == "solid":
        mix = np.zeros_like(x)
    elif kind == "stripes":
        angle = rng.uniform(0.0, np.pi)
        period = rng.uniform(4.0, 12.0)
        mix = (((x * np.cos(angle) + y * np.sin(angle)) / period) % 1.0 < 0.5).astype(np.float32)
    elif kind == "checker":
        cell = rng.uniform(3.0, 8.0)
        mix = ((np.floor(x / cell) + np.floor(y / cell)) % 2).astype(np.float32)
    else:
        # Blocky noise (a coarse random grid, upsampled) rather than per-pixel noise, so it is a texture
        # and not just more sensor noise.
        block = int(rng.integers(2, 6))
        coarse = rng.uniform(0.0, 1.0, size=(x.shape[0] // block + 1, x.shape[1] // block + 1))
        mix = np.repeat(np.repeat(coarse, block, axis=0), block, axis=1)[: x.shape[0], : x.shape[1]]
        mix = mix.astype(np.float32)
    return colour_a + mix[..., np.newaxis] * (colour_b - colour_a)


def _shape_mask(
    class_id: int, x: np.ndarray, y: np.ndarray, centre: np.ndarray, extent: float, angle: float
) -> np.ndarray:
    """Returns the boolean mask of one shape of class `class_id` with the given extent (pixels)."""
    dx, dy = x - centre[0], y - centre[1]
    # Coordinates in the shape's rotated frame.
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    half = extent / 2.0
    name = CLASS_NAMES[class_id]
    if name == "disk":
        return dx * dx + dy * dy <= half * half
    if name == "square":
        return (np.abs(u) <= half) & (np.abs(v) <= half)
    if name == "triangle":
        # Equilateral, circumradius slightly above half the extent so its area is comparable to the others';
        # inside iff the point is within the inradius (circumradius / 2) along every edge normal.
        circumradius = 0.6 * extent
        inside = np.ones_like(x, dtype=bool)
        for k in range(3):
            normal_angle = np.pi + k * 2.0 * np.pi / 3.0
            inside &= u * np.cos(normal_angle) + v * np.sin(normal_angle) <= circumradius / 2.0
        return inside
    if name == "cross":
        arm = extent / 6.0
        return ((np.abs(u) <= half) & (np.abs(v) <= arm)) | ((np.abs(v) <= half) & (np.abs(u) <= arm))
    raise UserInputError(f"_shape_mask: expected a class id in [1, {len(CLASS_NAMES)}), received {class_id}")


def _background(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, image_size: int) -> np.ndarray:
    """Returns a smooth gradient with thin lines and small elongated blobs (none of them a shape class)."""
    start, end = _random_colour(rng), _random_colour(rng)
    angle = rng.uniform(0.0, 2.0 * np.pi)
    ramp = x * np.cos(angle) + y * np.sin(angle)
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    image = start + ramp[..., np.newaxis] * (end - start)
    for _ in range(rng.integers(1, 4)):
        # A thin line: points within half a width of a random line through the image.
        point = rng.uniform(0.0, image_size, size=2)
        direction = rng.uniform(0.0, np.pi)
        distance = np.abs(-(x - point[0]) * np.sin(direction) + (y - point[1]) * np.cos(direction))
        image[distance <= rng.uniform(0.5, 1.25)] = _random_colour(rng)
    for _ in range(rng.integers(1, 4)):
        # A small, strongly elongated ellipse: too thin and small to pass for a disk.
        centre = rng.uniform(0.0, image_size, size=2)
        major = rng.uniform(0.04, 0.08) * image_size
        minor = major / rng.uniform(2.5, 4.0)
        blob_angle = rng.uniform(0.0, np.pi)
        dx, dy = x - centre[0], y - centre[1]
        u = dx * np.cos(blob_angle) + dy * np.sin(blob_angle)
        v = -dx * np.sin(blob_angle) + dy * np.cos(blob_angle)
        image[(u / major) ** 2 + (v / minor) ** 2 <= 1.0] = _random_colour(rng)
    return image


def _ignore_boundaries(label: np.ndarray, width: int) -> np.ndarray:
    """Returns `label` with an ignore band `width` (1 or 2) pixels wide along every label boundary."""
    boundary = np.zeros(label.shape, dtype=bool)
    # Forward differences mark the pixel before each change (a 1 px band); width 2 also marks the pixel after.
    horizontal = label[:, :-1] != label[:, 1:]
    vertical = label[:-1, :] != label[1:, :]
    boundary[:, :-1] |= horizontal
    boundary[:-1, :] |= vertical
    if width == 2:
        boundary[:, 1:] |= horizontal
        boundary[1:, :] |= vertical
    return np.where(boundary, np.uint8(IGNORE_LABEL), label)


def render_example(rng: np.random.Generator, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Renders one example; deterministic given the state of `rng`.

    Args:
      rng: the random generator to draw from (advanced by the call).
      image_size: the side of the square image in pixels.

    Returns:
      `(image, label)`: uint8 [S, S, 3] and uint8 [S, S] with values in [0, 5) or 255 (ignore).
    """
    x, y = _grid(image_size)
    image = _background(rng, x, y, image_size)
    label = np.zeros((image_size, image_size), dtype=np.uint8)
    centres: list[tuple[np.ndarray, float]] = []
    for _ in range(rng.integers(_MIN_SHAPES, _MAX_SHAPES + 1)):
        class_id = int(rng.integers(1, len(CLASS_NAMES)))
        extent = rng.uniform(_MIN_EXTENT, _MAX_EXTENT) * image_size
        # A few tries at a centre away from earlier shapes: some occlusion is realistic, but a shape hidden
        # almost entirely would leave only an unrecognisable sliver of its class.
        for _ in range(8):
            centre = rng.uniform(extent / 2.0, image_size - extent / 2.0, size=2)
            if all(np.linalg.norm(centre - c) > 0.5 * (extent + e) / 2.0 for c, e in centres):
                break
        centres.append((centre, extent))
        angle = rng.uniform(0.0, 2.0 * np.pi) if CLASS_NAMES[class_id] != "disk" else 0.0
        mask = _shape_mask(class_id, x, y, centre, extent, angle)
        image[mask] = _texture(rng, x, y, behind=image[mask].mean(axis=0))[mask]
        label[mask] = class_id
    image += rng.normal(0.0, rng.uniform(2.0, 8.0), size=image.shape).astype(np.float32)
    label = _ignore_boundaries(label, width=int(rng.integers(1, 3)))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), label


def _write_split(
    directory: str, split: str, rng: np.random.Generator, image_size: int, num_examples: int, num_shards: int
) -> list[str]:
    paths = [os.path.join(directory, f"{split}-{k:05d}-of-{num_shards:05d}.tfrecord") for k in range(num_shards)]
    writers = [tf.io.TFRecordWriter(path) for path in paths]
    try:
        for index in range(num_examples):
            image, label = render_example(rng, image_size)
            # Round-robin keeps shard sizes within one example of each other.
            writers[index % num_shards].write(schema.encode_example(image, label, f"{split}-{index:06d}.png"))
    finally:
        for writer in writers:
            writer.close()
    return paths


def _check_settings(image_size: int, num_train_examples: int, num_eval_examples: int, num_shards: int) -> None:
    for binding, value in (
        ("image_size", image_size),
        ("num_train_examples", num_train_examples),
        ("num_eval_examples", num_eval_examples),
        ("num_shards", num_shards),
    ):
        validate.positive_int(f"synthetic_shapes.{binding}", value)
    if min(num_train_examples, num_eval_examples) < num_shards:
        raise UserInputError(
            f"synthetic_shapes.num_shards: expected at most min(num_train_examples, num_eval_examples) = "
            f"{min(num_train_examples, num_eval_examples)} shards so none is empty, received {num_shards}"
        )


def _generate(
    staging: str,
    target: str,
    image_size: int,
    num_train_examples: int,
    num_eval_examples: int,
    num_shards: int,
    seed: int,
) -> None:
    """Writes the dataset's TFRecords and JSON into `staging`, with file paths valid once it is renamed `target`."""
    # Distinct, independent streams per split: the eval set does not change with num_train_examples.
    train_rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    eval_rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    train_files = _write_split(staging, "train", train_rng, image_size, num_train_examples, num_shards)
    eval_files = _write_split(staging, "eval", eval_rng, image_size, num_eval_examples, num_shards)
    info = info_lib.DatasetInfo(
        name="synthetic_shapes",
        num_classes=len(CLASS_NAMES),
        class_names=CLASS_NAMES,
        ignore_label=IGNORE_LABEL,
        train_files=tuple(os.path.join(target, os.path.basename(f)) for f in train_files),
        eval_files=tuple(os.path.join(target, os.path.basename(f)) for f in eval_files),
        num_train_examples=num_train_examples,
        num_eval_examples=num_eval_examples,
        max_image_size=(image_size, image_size),
    )
    # Saved relative to `target`, so the JSON is valid once the staging directory has been renamed.
    info_lib.save(info, os.path.join(staging, info_lib.INFO_FILENAME), files_relative_to=target)


def _move_into_place_unless_taken(staging: str, target: str) -> bool:
    """Renames `staging` to `target`; returns False when another process got there first (its copy stays)."""
    try:
        tf.io.gfile.rename(staging, target)
    except (tf.errors.OpError, OSError):
        # Another worker renamed its copy into place first; both are identical (same seed), keep theirs.
        if not tf.io.gfile.exists(os.path.join(target, info_lib.INFO_FILENAME)):
            raise
        tf.io.gfile.rmtree(staging)
        return False
    return True


@gin.configurable
def synthetic_shapes(
    data_dir: str = "data/synthetic_shapes",
    image_size: int = 96,
    num_train_examples: int = 2000,
    num_eval_examples: int = 200,
    num_shards: int = 4,
    seed: int = 0,
) -> info_lib.DatasetInfo:
    """Returns the synthetic shapes dataset, generating its TFRecords under `data_dir` on first use.

    The files live in a subdirectory named after every parameter, so changing one generates a new dataset and
    never reuses a stale one. Generation writes to a temporary sibling and renames it into place, so
    concurrent workers never see a half-written dataset.

    Raises:
      UserInputError: if a size or count is not positive, or a split has fewer examples than shards.
    """
    _check_settings(image_size, num_train_examples, num_eval_examples, num_shards)
    name = f"v{GENERATOR_VERSION}_s{image_size}_n{num_train_examples}_e{num_eval_examples}_k{num_shards}_seed{seed}"
    target = os.path.join(data_dir, name)
    info_path = os.path.join(target, info_lib.INFO_FILENAME)
    if tf.io.gfile.exists(info_path):
        logging.info("Using the synthetic shapes dataset in %s", target)
        return info_lib.load(info_path)

    tf.io.gfile.makedirs(data_dir)
    staging = os.path.join(data_dir, f".{name}.tmp-{uuid.uuid4().hex}")
    tf.io.gfile.makedirs(staging)
    start = time.perf_counter()
    _generate(staging, target, image_size, num_train_examples, num_eval_examples, num_shards, seed)
    if not _move_into_place_unless_taken(staging, target):
        logging.info("Another process generated %s first; using its copy", target)
        return info_lib.load(info_path)
    logging.info(
        "Generated the synthetic shapes dataset in %s: %d train and %d eval %dx%d examples in %.1f s",
        target,
        num_train_examples,
        num_eval_examples,
        image_size,
        image_size,
        time.perf_counter() - start,
    )
    return info_lib.load(info_path)
