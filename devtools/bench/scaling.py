"""`python -m devtools.bench scaling`: how the training cost grows with crop, global batch and replicas.

  python -m devtools.bench scaling [--config=configs/bench_resnet50_os16.gin]      # make bench-scaling

One axis at a time around the reference (256×256, global batch 8, one device): crops 128, 256, 513; global
batches 4, 8, 16; replicas: one device, Mirrored over 2 logical CPUs (`--virtual_cpus=2`), and
MultiWorkerMirrored over 2 local worker processes (TF_CONFIG on 127.0.0.1). Each cell is one process of
`python -m devtools.bench train` (in-memory step, median step time); the workers of a multi-worker cell run at
once and the chief's figures count.
"""

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence

from trainer.cluster.launch import free_ports, worker_tf_config

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REFERENCE_CROP, REFERENCE_BATCH = 256, 8


@dataclasses.dataclass(frozen=True)
class Cell:
    """One measured setting."""

    axis: str
    crop: int
    global_batch_size: int
    replicas: str
    timed_steps: int


def cells(timed_steps: int) -> list[Cell]:
    """The settings of the table: the reference, and each axis varied alone."""
    reference = Cell("reference", REFERENCE_CROP, REFERENCE_BATCH, "one device", timed_steps)
    few = max(3, timed_steps // 4)  # 513×513 on a CPU: a few steps take minutes
    return [
        dataclasses.replace(reference, axis="crop", crop=128),
        reference,
        dataclasses.replace(reference, axis="crop", crop=513, timed_steps=few),
        dataclasses.replace(reference, axis="batch", global_batch_size=4),
        dataclasses.replace(reference, axis="batch", global_batch_size=16, timed_steps=max(few, timed_steps // 2)),
        dataclasses.replace(reference, axis="replicas", replicas="Mirrored, 2 logical CPUs"),
        dataclasses.replace(reference, axis="replicas", replicas="MultiWorkerMirrored, 2 local workers"),
    ]


def _command(cell: Cell, args, output_json: str, strategy: str, extra: Sequence[str] = ()) -> list[str]:
    command = [sys.executable, "-m", "devtools.bench", "train", *(f"--config={c}" for c in args.config)]
    command += [f"--crop={cell.crop}", f"--gin_bindings=train.global_batch_size={cell.global_batch_size}"]
    command += [f"--timed_steps={cell.timed_steps}", "--warmup_steps=2", f"--strategy={strategy}", *extra]
    return command + [f"--peak_size={args.peak_size}", f"--output_json={output_json}"]


def measure(cell: Cell, args, work_dir: str) -> dict:
    """Runs the benchmark process(es) of one cell; returns the chief's result."""
    output = os.path.join(work_dir, f"{cell.axis}_{cell.crop}_{cell.global_batch_size}_{len(cell.replicas)}.json")
    if cell.replicas.startswith("MultiWorker"):
        hosts = [f"127.0.0.1:{port}" for port in free_ports(2)]
        workers = []
        for index in range(2):
            env = {**os.environ, "TF_CONFIG": worker_tf_config(hosts, index)}
            target = output if index == 0 else output + f".worker{index}"
            command = _command(cell, args, target, "multi_worker_mirrored")
            workers.append(subprocess.Popen(command, env=env, cwd=_REPO_ROOT, stdout=subprocess.DEVNULL))
        codes = [worker.wait() for worker in workers]
        if any(codes):
            raise RuntimeError(f"{cell}: workers exited {codes}.")
    else:
        mirrored = cell.replicas.startswith("Mirrored")
        strategy = "mirrored" if mirrored else "one_device"
        extra = ["--virtual_cpus=2"] if mirrored else []
        subprocess.run(
            _command(cell, args, output, strategy, extra), check=True, cwd=_REPO_ROOT, stdout=subprocess.DEVNULL
        )
    with open(output) as f:
        report = json.load(f)
    return {"cell": dataclasses.asdict(cell), "machine": report["machine"], **report["results"][0]}


def format_report(results: Sequence[dict]) -> str:
    lines = [
        f"DeepLab Trainer scaling: {results[0]['model']}; machine: {results[0]['machine']}",
        "",
        "| varied | crop | global batch | replicas | examples/s | ms/step | MFU | time to first step | peak RSS |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        cell = r["cell"]
        lines.append(
            f"| {cell['axis']} | {cell['crop']}x{cell['crop']} | {cell['global_batch_size']} | {cell['replicas']} | "
            f"{r['examples_per_second']:.2f} | {1000 * r['step_seconds_median']:.0f} | {100 * r['mfu']:.1f}% | "
            f"{r['first_step_seconds']:.1f} s | {r['peak_rss_mib'] / 1024:.2f} GiB |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    """Measures every cell in turn; prints the table. Returns 0."""
    parser = argparse.ArgumentParser(prog="python -m devtools.bench scaling", description=__doc__.split("\n")[0])
    parser.add_argument("--config", action="append", default=None, help="gin file (repeatable).")
    parser.add_argument("--timed_steps", type=int, default=12, help="timed steps per cell (fewer at 513 and 16).")
    parser.add_argument("--peak_size", type=int, default=4096, help="matrix size of the peak measurement.")
    parser.add_argument("--output_json", default=None, help="also write the results to this JSON file.")
    args = parser.parse_args(argv)
    args.config = args.config or ["configs/bench_resnet50_os16.gin"]
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_scaling_") as work_dir:
        for cell in cells(args.timed_steps):
            results.append(measure(cell, args, work_dir))
            print(f"  {cell}: {results[-1]['examples_per_second']:.2f} examples/s", flush=True)
    print(format_report(results))
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
