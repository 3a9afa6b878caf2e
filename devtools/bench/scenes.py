"""Synthetic segmentation examples for the benchmarks: smooth random images, masks of a few random rectangles.

NumPy only, so both sides of `make bench-compare` (each with its own TensorFlow) write the same scenes.
"""

import numpy as np

NUM_CLASSES = 21


def example_size(crop: int) -> tuple[int, int]:
    """Height and width of the stored images for a crop: larger than it, so scaling and cropping do real work."""
    return int(crop * 1.25), int(crop * 1.5)


def scene(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A uint8 [height, width, 3] image (8-pixel blocks plus noise: JPEG-friendly, not noise) and its label map."""
    coarse = rng.uniform(0, 255, size=(height // 8 + 1, width // 8 + 1, 3))
    image = np.kron(coarse, np.ones((8, 8, 1)))[:height, :width]
    image = np.clip(image + rng.normal(0, 8, size=image.shape), 0, 255).astype(np.uint8)
    label = np.zeros((height, width), np.uint8)
    for _ in range(4):
        top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
        bottom, right = top + rng.integers(8, height // 2), left + rng.integers(8, width // 2)
        label[top:bottom, left:right] = rng.integers(1, NUM_CLASSES)
    return image, label
