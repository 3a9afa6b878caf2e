"""Drives the TF.js page (deploy/web) in headless Chromium on one image and reads its class overlay back.

  python -m devtools.web_page --model=runs/quickstart/tfjs/3000 --image=image.png --screenshot=docs/web_page.png

The page, its vendored tf.min.js (`npm ci && npm run build` in deploy/web), the graph model and the image are
served from a temporary directory on 127.0.0.1; Chromium loads `index.html?image=...` (which segments at once),
dumps the DOM (the overlay's position and scale, written by the page when done) and takes a screenshot. The
class of every image pixel is read back from the screenshot as the palette colour whose blend with the image
pixel is nearest.
"""

import contextlib
import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator

import numpy as np
from absl import app, flags
from PIL import Image

from trainer.common.images import voc_palette

WEB_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "deploy", "web")
PAGE_FILES = ("index.html", "app.js", os.path.join("vendor", "tf.min.js"))
WINDOW_SIZE = (1100, 520)
OVERLAY_ALPHA = 0.5


def find_chromium() -> str | None:
    """Debian's `chromium` (or another Chromium/Chrome on PATH); None if there is none."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def missing_page_files(web_dir: str = WEB_DIR) -> list[str]:
    """The page's files not built yet (vendor/tf.min.js comes from `npm run build`)."""
    return [name for name in PAGE_FILES if not os.path.exists(os.path.join(web_dir, name))]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        del args


@contextlib.contextmanager
def _served(directory: str) -> Iterator[str]:
    handler = functools.partial(_QuietHandler, directory=directory)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _chromium(chromium: str, url: str, *arguments: str) -> str:
    command = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        f"--window-size={WINDOW_SIZE[0]},{WINDOW_SIZE[1]}",
        "--virtual-time-budget=60000",
        *arguments,
        url,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{chromium} failed (exit code {result.returncode}):\n{result.stderr[-3000:]}")
    return result.stdout


def capture(model_dir: str, image_file: str, screenshot: str, backend: str = "cpu", web_dir: str = WEB_DIR) -> dict:
    """Loads the page on `image_file` with the graph model of `model_dir`; writes the screenshot.

    Returns:
      The page's result: {status, backend, width, height, scale, x, y} (the overlay canvas's place).
    """
    chromium = find_chromium()
    if chromium is None:
        raise RuntimeError("expected chromium on PATH (apt-get install chromium), found none.")
    with tempfile.TemporaryDirectory() as root:
        for name in PAGE_FILES:
            os.makedirs(os.path.dirname(os.path.join(root, name)), exist_ok=True)
            shutil.copy(os.path.join(web_dir, name), os.path.join(root, name))
        shutil.copytree(model_dir, os.path.join(root, "model"))
        shutil.copy(image_file, os.path.join(root, "image.png"))
        with _served(root) as address:
            url = f"{address}/index.html?model=model/model.json&image=image.png&backend={backend}"
            dom = _chromium(chromium, url, "--dump-dom")
            _chromium(chromium, url, f"--screenshot={os.path.abspath(screenshot)}")
    found = re.search(r'<pre id="result"[^>]*>(.*?)</pre>', dom, re.S)
    if found is None or not found.group(1).strip():
        raise RuntimeError(f"the page wrote no result; its DOM:\n{dom[-3000:]}")
    return json.loads(found.group(1))


def class_map_from_screenshot(screenshot: str, image: np.ndarray, result: dict, num_classes: int) -> np.ndarray:
    """The class of each pixel of `image` (uint8 [H, W, 3]) as the page drew it in the overlay of `screenshot`."""
    height, width = image.shape[:2]
    scale = result["scale"]
    rows = int(round(result["y"])) + np.arange(height) * scale + scale // 2
    columns = int(round(result["x"])) + np.arange(width) * scale + scale // 2
    shot = np.asarray(Image.open(screenshot).convert("RGB"), np.float32)
    drawn = shot[rows[:, None], columns[None, :]]
    colors = voc_palette(num_classes).astype(np.float32)
    # The overlay colour of each pixel for each class: [H, W, C, 3].
    candidates = (1 - OVERLAY_ALPHA) * image.astype(np.float32)[:, :, None] + OVERLAY_ALPHA * colors
    return np.argmin(np.abs(candidates - drawn[:, :, None]).sum(axis=-1), axis=-1).astype(np.int32)


FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "The TF.js graph model directory (model_dir/tfjs/<step>).")
flags.DEFINE_string("image", None, "The image to segment (PNG).")
flags.DEFINE_string("screenshot", "web_page.png", "Where to write the screenshot.")
flags.DEFINE_string("backend", "cpu", "The TF.js backend the page uses.")


def main(argv: list[str]) -> int:
    del argv
    missing = missing_page_files()
    if missing:
        print(f"error: the page is not built ({', '.join(missing)}): run `npm ci && npm run build` in {WEB_DIR}.")
        return 2
    print(json.dumps(capture(FLAGS.model, FLAGS.image, FLAGS.screenshot, FLAGS.backend)))
    return 0


if __name__ == "__main__":
    flags.mark_flags_as_required(["model", "image"])
    sys.exit(app.run(main))
