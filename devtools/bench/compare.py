"""`python -m devtools.bench compare`: this trainer against TF Model Garden's, on the same TFRecords, one sitting.

  python -m devtools.bench compare --crop=128 --crop=256      # make bench-compare

Installs `tf-models-official` (with its own TensorFlow) into a separate virtual environment (`--venv`, once),
writes one set of TFRecords per crop with Model Garden's `TfExampleBuilder` (`model_garden_side.py records`),
then runs, as separate processes alternating their order round by round, Model Garden's trainer
(`run_experiment` on `seg_deeplabv3plus_pascal` scaled to ResNet-50 OS16, ReLU, batch 8, no pretrained weights)
and ours (`python -m trainer` on `configs/bench_resnet50_os16.gin`), both reading those files through their own
input pipelines with their own augmentation (random scale 0.5-2.0, crop, flip), for the same steps and steps per
host loop. Each trainer's throughput is read from its own TensorBoard summaries: examples/s over the wall clock
between its first and last loop summaries (everything a run does between loops included), and its own per-loop
figure. Each model's dense forward FLOPs are counted by `trainer.observe.flops` on its own traced graph, and MFU
uses one fp32 peak measured here. Time to first loop: process start to the end of the first host loop.
"""

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

import tensorflow as tf

from devtools.bench import events
from devtools.bench.train_throughput import machine
from trainer.observe.flops import TRAIN_FLOPS_PER_FORWARD_FLOP, FlopCount, forward_flops_per_image, graph_flops
from trainer.observe.peak import matmul_chain_peak

MODEL_GARDEN_REQUIREMENT = "tf-models-official==2.20.0"  # the newest release; it brings TensorFlow 2.20
GLOBAL_BATCH_SIZE = 8
OUR_CONFIG = "configs/bench_resnet50_os16.gin"
_SIDE_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "model_garden_side.py")
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclasses.dataclass(frozen=True)
class TrainerRun:
    """One process of one trainer at one crop."""

    trainer: str
    crop: int
    round: int
    wall_examples_per_second: float
    own_examples_per_second: float
    seconds_to_first_loop: float


def ensure_model_garden(venv: str) -> str:
    """The Python of a virtual environment holding Model Garden, created and installed on first use."""
    python = os.path.join(venv, "bin", "python")
    if not os.path.exists(python):
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    if subprocess.run([python, "-c", "import official.core.train_lib"], capture_output=True).returncode != 0:
        print(f"Installing {MODEL_GARDEN_REQUIREMENT} into {venv} (once; a few minutes) ...", flush=True)
        subprocess.run([python, "-m", "pip", "install", "--quiet", MODEL_GARDEN_REQUIREMENT], check=True)
    return python


def _run_logged(command: Sequence[str], log_path: str) -> float:
    """Runs `command` to completion with its output in `log_path`; returns its start time (epoch seconds)."""
    started = time.time()
    with open(log_path, "w") as log:
        completed = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=_REPO_ROOT)
    if completed.returncode != 0:
        with open(log_path) as log:
            tail = log.read()[-3000:]
        raise RuntimeError(f"{command[:3]} exited {completed.returncode}; the end of {log_path}:\n{tail}")
    return started


def _model_garden_command(python: str, records: str, crop: int, args, model_dir: str) -> list[str]:
    return [
        python, _SIDE_SCRIPT, "train", f"--records={records}", f"--crop={crop}", f"--steps={args.steps}",
        f"--steps_per_loop={args.steps_per_loop}", f"--model_dir={model_dir}",
    ]  # fmt: skip


def _our_command(records: str, crop: int, args, model_dir: str, peak_flops: float) -> list[str]:
    bindings = [
        "run.dataset = @tfrecord_dataset",
        f"tfrecord_dataset.train_pattern = '{records}'",
        f"tfrecord_dataset.eval_pattern = '{records}'",
        "tfrecord_dataset.num_classes = 21",
        f"input_pipeline.crop_size = ({crop}, {crop})",
        f"train.steps = {args.steps}",
        f"train.steps_per_loop = {args.steps_per_loop}",
        f"train.global_batch_size = {GLOBAL_BATCH_SIZE}",
        f"train.checkpoint_every_steps = {args.steps}",
        f"observe.peak_flops_per_sec = {peak_flops}",  # the peak measured here; the run does not re-measure
    ]
    command = [sys.executable, "-m", "trainer", f"--gin_file={OUR_CONFIG}", "--mode=train", "--strategy=one_device"]
    return command + [f"--gin_bindings={b}" for b in bindings] + [f"--model_dir={model_dir}"]


def time_one(trainer: str, command: list[str], model_dir: str, tag: str, per_step: bool, crop: int, rnd: int):
    """Runs one trainer process and reads its throughput back from its train summaries."""
    started = _run_logged(command, model_dir + ".log")
    series = events.scalar_series(os.path.join(model_dir, "train"), tag)
    result = events.throughput(series, GLOBAL_BATCH_SIZE, per_step=per_step)
    return TrainerRun(
        trainer=trainer,
        crop=crop,
        round=rnd,
        wall_examples_per_second=result.wall_examples_per_second,
        own_examples_per_second=result.own_examples_per_second,
        seconds_to_first_loop=result.first_summary_wall_time - started,
    )


def model_garden_flops(python: str, crop: int, work_dir: str) -> tuple[FlopCount, int]:
    """Model Garden's forward FLOPs per image (our counter on its graph) and its parameter count."""
    path = os.path.join(work_dir, f"model_garden_forward_{crop}.pb")
    output = subprocess.run(
        [python, _SIDE_SCRIPT, "graph", f"--crop={crop}", f"--out={path}"],
        check=True, capture_output=True, text=True, cwd=_REPO_ROOT,
    )  # fmt: skip
    graph_def = tf.compat.v1.GraphDef()
    with open(path, "rb") as f:
        graph_def.ParseFromString(f.read())
    with tf.Graph().as_default() as graph:
        tf.graph_util.import_graph_def(graph_def, name="")
    return graph_flops(graph), int(output.stdout.strip().splitlines()[-1])


def our_flops(crop: int) -> tuple[FlopCount, int]:
    """Our model's forward FLOPs per image and parameter count, from the benchmark config."""
    import gin

    from trainer.core.config import parse_gin
    from trainer.tools.model_stats import build_configured_model

    gin.clear_config()
    parse_gin([os.path.join(_REPO_ROOT, OUR_CONFIG)], [])
    model = build_configured_model(21)
    model(tf.zeros([1, crop, crop, 3]), training=False)
    return forward_flops_per_image(model, crop, crop), model.count_params()


def _median_run(runs: Sequence[TrainerRun]) -> dict[str, float]:
    return {
        "wall_examples_per_second": statistics.median(r.wall_examples_per_second for r in runs),
        "own_examples_per_second": statistics.median(r.own_examples_per_second for r in runs),
        "seconds_to_first_loop": statistics.median(r.seconds_to_first_loop for r in runs),
    }


def compare_crop(crop: int, python: str, args, peak_flops: float, work_dir: str) -> dict:
    """Both trainers at `crop`: FLOPs, parameters, and `--rounds` alternating timed runs of each."""
    records = subprocess.run(
        [python, _SIDE_SCRIPT, "records", f"--out_dir={work_dir}/records_{crop}", f"--crop={crop}",
         f"--num_examples={args.num_examples}"],
        check=True, capture_output=True, text=True, cwd=_REPO_ROOT,
    ).stdout.strip().splitlines()[-1]  # fmt: skip
    flops = {"model_garden": model_garden_flops(python, crop, work_dir), "ours": our_flops(crop)}
    runs = []
    for rnd in range(args.rounds):
        order = ("model_garden", "ours") if rnd % 2 == 0 else ("ours", "model_garden")
        for trainer in order:
            model_dir = os.path.join(work_dir, f"{trainer}_{crop}_{rnd}")
            if trainer == "ours":
                command = _our_command(records, crop, args, model_dir, peak_flops)
                runs.append(time_one(trainer, command, model_dir, "examples_per_sec", False, crop, rnd))
            else:
                command = _model_garden_command(python, records, crop, args, model_dir)
                runs.append(time_one(trainer, command, model_dir, "steps_per_second", True, crop, rnd))
            print(f"  {runs[-1]}", flush=True)
    result = {"crop": crop, "runs": [dataclasses.asdict(r) for r in runs]}
    for trainer, (count, parameters) in flops.items():
        summary = _median_run([r for r in runs if r.trainer == trainer])
        summary["forward_gflops_per_image"] = count.total / 1e9
        summary["parameters"] = parameters
        summary["mfu"] = TRAIN_FLOPS_PER_FORWARD_FLOP * count.total * summary["wall_examples_per_second"] / peak_flops
        result[trainer] = summary
    result["ours_over_model_garden"] = (
        result["ours"]["wall_examples_per_second"] / result["model_garden"]["wall_examples_per_second"]
    )
    return result


def format_report(header: Sequence[str], results: Sequence[dict]) -> str:
    lines = [
        *header,
        "",
        "| crop | trainer | parameters | GFLOPs/image (fwd) | examples/s (wall) | examples/s (own timing) | MFU "
        "| time to first loop | ours ÷ Model Garden |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        for trainer, name in (("model_garden", "Model Garden"), ("ours", "DeepLab Trainer")):
            s = result[trainer]
            ratio = f"**{result['ours_over_model_garden']:.2f}×**" if trainer == "ours" else ""
            lines.append(
                f"| {result['crop']}x{result['crop']} | {name} | {s['parameters']:,} | "
                f"{s['forward_gflops_per_image']:.2f} | {s['wall_examples_per_second']:.2f} | "
                f"{s['own_examples_per_second']:.2f} | {100 * s['mfu']:.1f}% | {s['seconds_to_first_loop']:.1f} s | "
                f"{ratio} |"
            )
    return "\n".join(lines)


def _parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m devtools.bench compare", description=__doc__.split("\n")[0])
    parser.add_argument("--crop", type=int, action="append", help="square crop size (repeatable; default 128, 256).")
    parser.add_argument("--rounds", type=int, default=2, help="timed runs of each trainer per crop, alternating.")
    parser.add_argument("--steps", type=int, default=25, help="training steps per run (the first loop untimed).")
    parser.add_argument("--steps_per_loop", type=int, default=5, help="steps per host loop, for both trainers.")
    parser.add_argument("--num_examples", type=int, default=64, help="examples in the TFRecords.")
    parser.add_argument("--venv", default=".venv-model-garden", help="virtual environment for Model Garden.")
    parser.add_argument("--work_dir", default=None, help="keep records, runs and logs here (default: a temp dir).")
    parser.add_argument("--output_json", default=None, help="also write the results to this JSON file.")
    args = parser.parse_args(argv)
    args.crop = args.crop or [128, 256]
    if args.steps < 3 * args.steps_per_loop or args.rounds < 1:
        parser.error("expected --steps >= 3 x --steps_per_loop (three host loops) and --rounds >= 1.")
    return args


def main(argv: Sequence[str]) -> int:
    """Runs the comparison for every `--crop`; prints the report. Returns 0."""
    args = _parse_args(argv)
    python = ensure_model_garden(args.venv)
    peak = matmul_chain_peak(tf.float32)
    versions = subprocess.run(
        [python, "-c", "import tensorflow as tf, importlib.metadata as m; "
         "print(tf.__version__, m.version('tf-models-official'))"],
        check=True, capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench_compare_") as temp_dir:
        work_dir = args.work_dir or temp_dir
        os.makedirs(work_dir, exist_ok=True)
        results = [compare_crop(crop, python, args, peak.flops_per_second, work_dir) for crop in args.crop]
    header = [
        "DeepLab Trainer vs TF Model Garden: DeepLabV3+ ResNet-50 OS16, 21 classes, ReLU, global batch 8, fp32, "
        "one device, no pretrained weights",
        f"machine: {machine()}; Model Garden: tf-models-official {versions[1]} on TensorFlow {versions[0]}",
        f"{args.num_examples} generated scenes per crop written with Model Garden's TfExampleBuilder; "
        f"{args.steps} steps per run in host loops of {args.steps_per_loop} (the first untimed); "
        f"{args.rounds} alternating rounds, medians",
        f"fp32 dense peak (chained {peak.size}x{peak.size} matmuls, measured here): "
        f"{peak.flops_per_second / 1e9:,.1f} GFLOP/s",
    ]
    print(format_report(header, results))
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump({"header": header, "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
