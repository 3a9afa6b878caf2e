"""`python -m devtools.bench e2e`: the real trainer on TFRecords, beside the in-memory and the bare step.

  python -m devtools.bench e2e --config=configs/bench_resnet50_os16.gin --crop=128 --crop=256

For each square crop, in one process and one strategy:

- end to end: `train_lib.run(mode='train')`, the code path of `python -m trainer`, on TFRecords (written here
  from `scenes`: JPEG images of 1.25 × 1.5 crop, PNG masks; or `--records`) through the input pipeline (random
  scale, crop, flip), with its summaries, actions and the final checkpoint, for one warm-up host loop and
  `--loops` timed loops of `--steps_per_loop` steps. Examples/s are read from the trainer's own TensorBoard
  summaries: its per-loop `examples_per_sec` (median) and the wall clock between the first and last loop
  summaries (everything between loops included);
- in memory: the same trainer fed one fixed batch from memory, `train(steps_per_loop)` timed per loop,
  before and after the end-to-end run (median of both);
- bare: a textbook `tf.function` step (forward, cross-entropy, backward, apply) on that batch.

end-to-end ÷ in-memory is what input and bookkeeping cost; in-memory ÷ bare what the trainer's step adds.
"""

import argparse
import dataclasses
import functools
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence

import gin
import numpy as np
import tensorflow as tf

from devtools.bench import events, scenes
from devtools.bench.train_throughput import bare_train_step, build_in_memory_trainer, machine
from trainer import train_lib
from trainer.cluster.communication import MirroredConfig, MultiWorkerConfig
from trainer.cluster.strategies import StrategyName, create_strategy
from trainer.core.config import parse_gin
from trainer.data import schema
from trainer.data.tfrecord import tfrecord_dataset
from trainer.observe.flops import TRAIN_FLOPS_PER_FORWARD_FLOP, forward_flops_per_image
from trainer.observe.peak import matmul_chain_peak


@dataclasses.dataclass(frozen=True)
class EndToEndResult:
    """What one crop measured; throughputs are examples per second."""

    crop: int
    global_batch_size: int
    replicas: int
    timed_steps: int
    end_to_end_own: float
    end_to_end_wall: float
    in_memory: float
    bare: float
    end_to_end_over_in_memory: float
    in_memory_over_bare: float
    forward_gflops_per_image: float
    mfu_end_to_end: float


def write_records(directory: str, crop: int, num_examples: int, seed: int = 0) -> str:
    """Writes `num_examples` scenes for `crop` as one TFRecord file in our schema; returns its path."""
    path = os.path.join(directory, "train-00000-of-00001.tfrecord")
    rng = np.random.default_rng(seed)
    with tf.io.TFRecordWriter(path) as writer:
        for index in range(num_examples):
            image, label = scenes.scene(rng, *scenes.example_size(crop))
            encoded = tf.io.encode_jpeg(image, quality=90).numpy()
            writer.write(schema.encode_example(image, label, f"scene_{index:05d}.jpg", encoded_image=encoded))
    return path


def _time_in_memory(trainer, steps_per_loop: int, loops: int) -> list[float]:
    """Seconds per step of `loops` host loops of the in-memory trainer."""
    seconds = []
    for _ in range(loops):
        started = time.perf_counter()
        trainer.train(steps_per_loop)
        seconds.append((time.perf_counter() - started) / steps_per_loop)
    return seconds


def _run_end_to_end(
    records: str, model_dir: str, strategy, num_classes: int, steps: int, batch: int
) -> events.Throughput:
    """`train_lib.run` for `steps` steps of global batch `batch` on `records`; its throughput from its summaries."""
    gin.bind_parameter("train.steps", steps)
    dataset = functools.partial(tfrecord_dataset, train_pattern=records, eval_pattern=records, num_classes=num_classes)
    train_lib.run("train", model_dir, strategy=strategy, dataset=dataset)
    return events.throughput(
        events.scalar_series(os.path.join(model_dir, "train"), "examples_per_sec"), batch, per_step=False
    )


def benchmark_crop(crop: int, strategy, args: argparse.Namespace, peak_flops: float, work_dir: str) -> EndToEndResult:
    """Times the three ways of running the configured trainer at `crop`; see the module doc."""
    gin.bind_parameter("input_pipeline.crop_size", (crop, crop))
    gin.bind_parameter("train.steps_per_loop", args.steps_per_loop)
    gin.bind_parameter("observe.peak_flops_per_sec", peak_flops)
    config = train_lib.configure(strategy)
    records = args.records or write_records(work_dir, crop, args.num_examples)
    trainer, (images, labels) = build_in_memory_trainer(crop, strategy, config, args.num_classes)
    bare_step, bare_batch = bare_train_step(
        strategy, trainer.model, trainer.optimizer, config.train.jit_compile, images, labels
    )
    flops = forward_flops_per_image(trainer.model, crop, crop).total
    trainer.train(args.steps_per_loop)  # traces
    in_memory = _time_in_memory(trainer, args.steps_per_loop, args.loops)
    bare_seconds = []
    for _ in range(args.loops * args.steps_per_loop + 1):
        started = time.perf_counter()
        strategy.experimental_local_results(bare_step(bare_batch))[0].numpy()
        bare_seconds.append(time.perf_counter() - started)
    steps = (args.loops + 1) * args.steps_per_loop
    batch = config.train.global_batch_size
    run_dir = os.path.join(work_dir, f"run_{crop}")
    run_throughput = _run_end_to_end(records, run_dir, strategy, args.num_classes, steps, batch)
    in_memory += _time_in_memory(trainer, args.steps_per_loop, args.loops)
    in_memory_rate = batch / statistics.median(in_memory)
    bare_rate = batch / statistics.median(bare_seconds[1:])
    return EndToEndResult(
        crop=crop,
        global_batch_size=batch,
        replicas=strategy.num_replicas_in_sync,
        timed_steps=run_throughput.timed_steps,
        end_to_end_own=run_throughput.own_examples_per_second,
        end_to_end_wall=run_throughput.wall_examples_per_second,
        in_memory=in_memory_rate,
        bare=bare_rate,
        end_to_end_over_in_memory=run_throughput.wall_examples_per_second / in_memory_rate,
        in_memory_over_bare=in_memory_rate / bare_rate,
        forward_gflops_per_image=flops / 1e9,
        mfu_end_to_end=TRAIN_FLOPS_PER_FORWARD_FLOP * flops * run_throughput.wall_examples_per_second / peak_flops,
    )


def format_report(header: Sequence[str], results: Sequence[EndToEndResult]) -> str:
    """The printed report: the setting, then one Markdown row per crop."""
    lines = [
        *header,
        "",
        "| crop | global batch | end to end, wall (examples/s) | end to end, own loop timing | in memory | bare step "
        "| end to end ÷ in memory | in memory ÷ bare | GFLOPs/image (fwd) | MFU end to end |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.crop}x{r.crop} | {r.global_batch_size} | {r.end_to_end_wall:.2f} | {r.end_to_end_own:.2f} | "
            f"{r.in_memory:.2f} | {r.bare:.2f} | {r.end_to_end_over_in_memory:.3f} | {r.in_memory_over_bare:.3f} | "
            f"{r.forward_gflops_per_image:.2f} | {100 * r.mfu_end_to_end:.1f}% |"
        )
    return "\n".join(lines)


def _parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m devtools.bench e2e", description=__doc__.split("\n")[0])
    parser.add_argument("--config", action="append", required=True, help="gin file (repeatable).")
    parser.add_argument("--gin_bindings", action="append", default=[], help="gin binding applied after the files.")
    parser.add_argument("--crop", type=int, action="append", help="square crop size (repeatable; default 256).")
    parser.add_argument("--num_classes", type=int, default=scenes.NUM_CLASSES, help="classes (21: PASCAL VOC).")
    parser.add_argument("--steps_per_loop", type=int, default=5, help="steps per host loop.")
    parser.add_argument("--loops", type=int, default=4, help="timed host loops after the warm-up loop (>= 2).")
    parser.add_argument("--num_examples", type=int, default=64, help="examples in the generated TFRecords.")
    parser.add_argument("--records", default=None, help="train on these TFRecords instead (glob pattern).")
    parser.add_argument("--strategy", default=StrategyName.AUTO.value, help="as the trainer's --strategy.")
    parser.add_argument("--peak_size", type=int, default=4096, help="matrix size of the peak measurement.")
    parser.add_argument("--output_json", default=None, help="also write the results to this JSON file.")
    args = parser.parse_args(argv)
    args.crop = args.crop or [256]
    if args.loops < 2 or args.steps_per_loop < 1 or args.num_examples < 1:
        parser.error("expected --loops >= 2, --steps_per_loop >= 1 and --num_examples >= 1.")
    return args


def main(argv: Sequence[str]) -> int:
    """Runs the end-to-end benchmark for every `--crop`; prints the report. Returns 0."""
    args = _parse_args(argv)
    parse_gin(args.config, args.gin_bindings)
    strategy = create_strategy(args.strategy, mirrored=MirroredConfig(), multi_worker=MultiWorkerConfig())
    peak = matmul_chain_peak(tf.float32, args.peak_size, strategy=strategy)
    peak_flops = peak.flops_per_second
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_e2e_") as work_dir:
        for crop in args.crop:
            crop_dir = os.path.join(work_dir, str(crop))
            os.makedirs(crop_dir)
            with gin.unlock_config():
                results.append(benchmark_crop(crop, strategy, args, peak_flops, crop_dir))
    header = [
        f"DeepLab Trainer end-to-end benchmark: {' '.join(args.config)} {' '.join(args.gin_bindings)}",
        f"machine: {machine()}; {type(strategy).__name__} with {strategy.num_replicas_in_sync} replica(s)",
        f"records: {args.records or f'{args.num_examples} generated scenes of 1.25 x 1.5 crop (JPEG, PNG masks)'}; "
        f"{args.loops} timed host loops of {args.steps_per_loop} steps after one warm-up loop",
        f"fp32 dense peak (chained {peak.size}x{peak.size} matmuls): {peak_flops / 1e9:,.1f} GFLOP/s",
    ]
    print(format_report(header, results))
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump({"header": header, "results": [dataclasses.asdict(r) for r in results]}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
