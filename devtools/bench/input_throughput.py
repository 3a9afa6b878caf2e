"""Input pipeline throughput on VOC-like data: decoded and augmented training examples per second.

    python -m devtools.bench input [--threads=1,2] [--num_images=200] [--crop_size=513] [--resume_cost]

Generates `num_images` VOC-like 500x375 JPEGs (smooth random scenes with objects, noise, ~VOC's file size)
and palette label PNGs in the PASCAL VOC layout, converts them with `trainer.data.convert`'s VOC converter,
and times `InputPipeline.train_dataset` (the recipe's augmentation: scale 0.5-2.0, crop, flip) with a private
thread pool of each size in `--threads`. `--resume_cost` also times resuming the stream at a step (skipping
ahead) against saving and restoring the iterator in a checkpoint.
"""

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
from PIL import Image

from trainer.common import images
from trainer.data.convert import voc, writer
from trainer.data.pipeline import InputPipeline
from trainer.data.tfrecord import converted_dataset

IMAGE_HEIGHT, IMAGE_WIDTH = 375, 500


def _scene(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One VOC-like example: a smooth random background with 1-4 objects, noise; their label map."""
    coarse = rng.uniform(0, 255, size=(1, 6, 8, 3)).astype(np.float32)
    image = tf.image.resize(coarse, (IMAGE_HEIGHT, IMAGE_WIDTH), method="bicubic")[0].numpy()
    label = np.zeros((IMAGE_HEIGHT, IMAGE_WIDTH), np.uint8)
    y, x = np.mgrid[0:IMAGE_HEIGHT, 0:IMAGE_WIDTH]
    for _ in range(rng.integers(1, 5)):
        cy, cx = rng.uniform(0, IMAGE_HEIGHT), rng.uniform(0, IMAGE_WIDTH)
        ry, rx = rng.uniform(30, 150), rng.uniform(30, 200)
        inside = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1
        # Textured objects: a colour plus stripes, so the JPEG carries detail as photos do.
        stripes = 40 * np.sin(x * rng.uniform(0.05, 0.5) + y * rng.uniform(0.05, 0.5))[..., None]
        image[inside] = (rng.uniform(0, 255, size=3) + stripes)[inside]
        label[inside] = rng.integers(1, len(voc.CLASS_NAMES))
    image += rng.normal(0, 16, size=image.shape)
    # VOC's void outline: a band along every object boundary.
    edges = np.zeros_like(label, dtype=bool)
    edges[:, 1:] |= label[:, 1:] != label[:, :-1]
    edges[1:, :] |= label[1:, :] != label[:-1, :]
    label[edges] = voc.IGNORE_LABEL
    return np.clip(image, 0, 255).astype(np.uint8), label


def make_voc_like_tree(directory: str, num_images: int, seed: int = 0) -> str:
    """Writes `num_images` VOC-like examples in the PASCAL VOC 2012 layout under `directory`; returns it."""
    rng = np.random.default_rng(seed)
    root = os.path.join(directory, "VOC2012")
    for sub in ("JPEGImages", "SegmentationClass", os.path.join("ImageSets", "Segmentation")):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    palette = images.voc_palette(256).flatten().tolist()
    ids = [f"2012_{k:06d}" for k in range(num_images)]
    for image_id in ids:
        image, label = _scene(rng)
        Image.fromarray(image).save(os.path.join(root, "JPEGImages", f"{image_id}.jpg"), quality=90)
        mask = Image.frombytes("P", (IMAGE_WIDTH, IMAGE_HEIGHT), label.tobytes())
        mask.putpalette(palette)
        mask.save(os.path.join(root, "SegmentationClass", f"{image_id}.png"))
    num_val = max(1, num_images // 10)
    lists = os.path.join(root, "ImageSets", "Segmentation")
    with open(os.path.join(lists, "train.txt"), "w") as f:
        f.write("\n".join(ids[num_val:]) + "\n")
    with open(os.path.join(lists, "val.txt"), "w") as f:
        f.write("\n".join(ids[:num_val]) + "\n")
    return directory


def _pipeline(crop_size: int, threads: int, **overrides) -> InputPipeline:
    settings = dict(
        crop_size=(crop_size, crop_size),
        min_scale=0.5,
        max_scale=2.0,
        flip=True,
        num_parallel_calls=threads,
        private_threadpool_size=threads,
        interleave_cycle_length=min(threads, 8),
    )
    settings.update(overrides)
    return InputPipeline(**settings)


def examples_per_second(info, pipeline: InputPipeline, batch_size: int, num_batches: int, warmup: int) -> float:
    """Times `num_batches` training batches after `warmup` ones; returns examples per second."""
    iterator = iter(pipeline.train_dataset(info, batch_size))
    for _ in range(warmup):
        next(iterator)
    started = time.perf_counter()
    for _ in range(num_batches):
        next(iterator)
    return num_batches * batch_size / (time.perf_counter() - started)


def _resume_cost(info, pipeline: InputPipeline, batch_size: int, directory: str) -> list[str]:
    """Times resuming at a step by skipping ahead, and by saving and restoring the iterator."""
    lines = []

    def first_batch_seconds(start_step: int) -> float:
        started = time.perf_counter()
        next(iter(pipeline.train_dataset(info, batch_size, start_step=start_step)))
        return time.perf_counter() - started

    baseline = min(first_batch_seconds(0) for _ in range(2))
    lines.append(f"  first batch of a fresh stream: {baseline:.2f} s")
    steps_per_epoch = info.num_train_examples / batch_size
    for epochs in (0.5, 0.99, 50.5):
        step = int(epochs * steps_per_epoch)
        seconds = first_batch_seconds(step)
        lines.append(f"  skip ahead to step {step} ({epochs} epochs): {seconds:.2f} s ({seconds - baseline:+.2f} s)")
    # Raw record rate: what the one counting pass and the partial epoch skip cost per record.
    files = list(info.train_files)
    started = time.perf_counter()
    count = int(tf.data.TFRecordDataset(files).repeat(5).reduce(np.int64(0), lambda n, _: n + 1))
    rate = count / (time.perf_counter() - started)
    lines.append(f"  raw records read (no decoding): {rate:,.0f}/s")

    iterator = iter(pipeline.train_dataset(info, batch_size))
    next(iterator)
    checkpoint = tf.train.Checkpoint(iterator=iterator)
    prefix = os.path.join(directory, "iterator", "ckpt")
    started = time.perf_counter()
    path = checkpoint.write(prefix)
    save_seconds = time.perf_counter() - started
    size = sum(os.path.getsize(p) for p in tf.io.gfile.glob(path + "*"))
    restored = iter(pipeline.train_dataset(info, batch_size))
    started = time.perf_counter()
    tf.train.Checkpoint(iterator=restored).read(path).assert_consumed()
    next(restored)
    restore_seconds = time.perf_counter() - started
    lines.append(
        f"  iterator checkpoint: save {save_seconds:.2f} s, {size / 2**20:.1f} MiB per checkpoint; "
        f"restore + first batch {restore_seconds:.2f} s"
    )
    return lines


def main(argv: Sequence[str]) -> None:
    """Runs the benchmark; `argv[0]` is the program, the rest its options (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m devtools.bench input", description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2", help="comma-separated private thread pool sizes")
    parser.add_argument("--num_images", type=int, default=200)
    parser.add_argument("--crop_size", type=int, default=513)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--num_batches", type=int, default=12, help="timed batches per thread count")
    parser.add_argument("--warmup_batches", type=int, default=2)
    parser.add_argument("--data_dir", default=None, help="where to write the data (default: a temporary dir)")
    parser.add_argument("--resume_cost", action="store_true", help="also time skip-ahead vs iterator checkpoints")
    args = parser.parse_args(list(argv[1:]))

    directory = args.data_dir or tempfile.mkdtemp(prefix="bench_input_")
    try:
        started = time.perf_counter()
        source_dir = make_voc_like_tree(os.path.join(directory, "source"), args.num_images)
        output = os.path.join(directory, "tfrecords")
        writer.write_dataset(voc.voc_source(source_dir), output, num_workers=os.cpu_count() or 1, overwrite=True)
        info = converted_dataset(data_dir=output)
        mean_jpeg = np.mean(
            [os.path.getsize(p) for p in tf.io.gfile.glob(os.path.join(source_dir, "VOC2012", "JPEGImages", "*"))]
        )
        print(
            f"{info.num_train_examples} training images of {IMAGE_WIDTH}x{IMAGE_HEIGHT} (JPEG, mean "
            f"{mean_jpeg / 1024:.0f} KiB), generated and converted in {time.perf_counter() - started:.1f} s; "
            f"crop {args.crop_size}, scale 0.5-2.0, flip, batch {args.batch_size}"
        )
        for threads in (int(t) for t in args.threads.split(",")):
            rate = examples_per_second(
                info, _pipeline(args.crop_size, threads), args.batch_size, args.num_batches, args.warmup_batches
            )
            print(f"  {threads} thread{'s' if threads > 1 else ''}: {rate:.1f} examples/s")
        if args.resume_cost:
            print("Resuming the training stream:")
            lines = _resume_cost(info, _pipeline(args.crop_size, 2), args.batch_size, directory)
            print("\n".join(lines))
    finally:
        if args.data_dir is None:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    import sys

    main(sys.argv)
