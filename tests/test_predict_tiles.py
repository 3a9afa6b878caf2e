"""trainer.predict on images larger than a tile: blended tiles, one trace, memory that follows the tile."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tests.helpers import REPO_ROOT
from tests.test_predict import ExportedModule
from trainer.common.errors import UserInputError
from trainer.core.inference import InferenceConfig
from trainer.serving import predict
from trainer.serving.tiling import TilingConfig, predict_tiled, ramp

NUM_CLASSES = 3


def _pixelwise_model():
    """Scores that depend on each pixel alone, so tiling must reproduce the whole-image prediction exactly."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input([None, None, 3])
    hidden = keras.layers.Conv2D(8, 1, activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Conv2D(NUM_CLASSES, 1)(hidden))


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("export") / "1")
    module = ExportedModule(_pixelwise_model())
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
    return path


def test_ramp_rises_over_the_overlap_and_is_never_zero():
    np.testing.assert_allclose(ramp(6, 2), [1 / 3, 2 / 3, 1, 1, 2 / 3, 1 / 3], rtol=1e-6)
    assert ramp(4, 0).tolist() == [1, 1, 1, 1]
    with pytest.raises(UserInputError, match="tiling.overlap"):
        TilingConfig(tile_size=64, overlap=64)


def test_tiles_reproduce_the_whole_image_and_trace_once_for_every_size():
    model = _pixelwise_model()
    rng = np.random.default_rng(0)
    config = TilingConfig(tile_size=32, overlap=8)
    calls = []

    @tf.function(input_signature=[tf.TensorSpec([32, 32, 3], tf.float32)])
    def tile_scores(pixels):
        calls.append(1)  # runs at tracing only
        return model(pixels[tf.newaxis] / 127.5 - 1.0, training=False)[0]

    for height, width in [(100, 77), (45, 130), (20, 50)]:
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        whole = model(tf.cast(pixels, tf.float32)[tf.newaxis] / 127.5 - 1.0, training=False)[0]
        tiled = predict_tiled(tile_scores, pixels, NUM_CLASSES, config)
        assert tiled.shape == (height, width) and tiled.dtype == np.uint8
        np.testing.assert_array_equal(tiled, tf.argmax(whole, axis=-1).numpy())
    assert len(calls) == 1


def test_predict_images_tiles_large_images_only(saved_model, tmp_path):
    rng = np.random.default_rng(1)
    paths = []
    for name, size in (("small.png", (30, 40)), ("large.png", (150, 90))):
        paths.append(str(tmp_path / name))
        tf.io.write_file(paths[-1], tf.io.encode_png(rng.integers(0, 256, (*size, 3), dtype=np.uint8)))
    predictor = predict.load_predictor(saved_model)
    untiled = predict.predict_images(predictor, paths, str(tmp_path / "whole"), TilingConfig(tile_size=4096))
    tiled = predict.predict_images(predictor, paths, str(tmp_path / "tiled"), TilingConfig(tile_size=64, overlap=16))
    for a, b in zip(untiled, tiled, strict=True):
        for key in ("label", "overlay"):
            np.testing.assert_array_equal(
                tf.io.decode_png(tf.io.read_file(a[key])), tf.io.decode_png(tf.io.read_file(b[key]))
            )
    assert InferenceConfig().mode == "whole"


# VmHWM, the peak RSS of this process's own memory: ru_maxrss would also count the pages of the (large) pytest
# process this one was forked from, which Linux carries over the exec.
_MEASURE = """
import json, sys
from trainer.serving import predict
from trainer.serving.tiling import TilingConfig
predictor = predict.load_predictor(sys.argv[1])
predict.predict_images(predictor, [sys.argv[2]], sys.argv[3], TilingConfig(tile_size=int(sys.argv[4]), overlap=64))
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
print(json.dumps({"peak_rss_kib": int(status["VmHWM"].split()[0])}))
"""


def _peak_rss_mib(saved_model, tmp_path, side, tile_size):
    image = str(tmp_path / f"image_{side}.png")
    if not os.path.exists(image):
        # Smooth, so that encoding it here is quick (the prediction's cost does not depend on the content).
        ramp_values = (np.arange(side) * 255 // (side - 1)).astype(np.uint8)
        pixels = np.stack(np.broadcast_arrays(ramp_values[:, None], ramp_values[None, :], 128), axis=-1)
        tf.io.write_file(image, tf.io.encode_png(pixels.astype(np.uint8)))
    result = subprocess.run(
        [sys.executable, "-c", _MEASURE, saved_model, image, str(tmp_path / f"out_{side}_{tile_size}"), str(tile_size)],
        cwd=REPO_ROOT,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO_ROOT),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_rss_kib"] / 1024


# What a tiled prediction holds per image pixel, whatever the model and the number of classes: the file's bytes,
# the decoded image (3 bytes), the class map (1), the overlay (3), the PNG encoders' input copies (4) and their
# outputs: 20 bytes allowed. The scores (4 bytes per class per pixel) and the activations follow the tile (and
# the scores' band, `tile_size` rows of the image's width).
BYTES_PER_PIXEL_BOUND = 20


@pytest.mark.slow  # predictions of a 1024² and a 4096² image in subprocesses: 1-3 minutes on 2 shared CPU cores
def test_peak_rss_of_a_4096_image_follows_the_tile_not_the_image(saved_model, tmp_path):
    small = _peak_rss_mib(saved_model, tmp_path, 1024, 512)
    large = _peak_rss_mib(saved_model, tmp_path, 4096, 512)
    growth_bound = BYTES_PER_PIXEL_BOUND * (4096**2 - 1024**2) / 2**20
    print(f"peak RSS: 1024² {small:.0f} MiB, 4096² {large:.0f} MiB (bound on the growth {growth_bound:.0f} MiB)")
    assert large - small < growth_bound
