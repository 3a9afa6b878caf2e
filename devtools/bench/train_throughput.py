"""`python -m devtools.bench train`: training throughput, MFU and the trainer's overhead over a bare step.

  python -m devtools.bench train --config=configs/bench_resnet50_os16.gin --crop=128 --crop=256 --crop=513

For each square crop it builds the configured model, optimizer, loss, precision and XLA setting with the
objects `run()` uses (`build_model_state`, `Trainer`), feeds the trainer one fixed random batch from memory
(the input pipeline is not measured), and reports:

- examples/sec: global batch / the median step time over `--timed_steps` steps (≥ 20) after `--warmup_steps`;
- time to the first step: the first call of the train loop (tracing, XLA compilation and one step);
- peak RSS of the process (and the accelerator's peak memory when there is one);
- model GFLOPs per image: 2 × multiply-adds of every convolution and matmul of the forward pass as the
  architecture defines it (a dilated 3×3 counts as a 3×3; see `trainer.observe.flops`); training = 3 × that
  (forward, and the two gradient convolutions of the backward pass);
- achieved training FLOP/s and MFU = training FLOPs per example × examples/sec ÷ the machine's dense peak,
  measured in the same run (`trainer.observe.peak`: a chain of `--peak_chain` `--peak_size`² matmuls inside one
  tf.function, best of `--peak_repeats`), in float32 and bfloat16 (and float16 under mixed_float16); a run is
  compared with the peak of its compute dtype;
- the trainer's overhead: its median step time over that of a bare `tf.function` train step (forward, plain
  cross-entropy, backward, the same optimizer) on the same model and the same batch, timed interleaved with it.
"""

import argparse
import dataclasses
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras

from trainer import train_lib
from trainer.cluster.communication import MirroredConfig, MultiWorkerConfig
from trainer.cluster.strategies import StrategyName, create_strategy
from trainer.cluster.virtual_cpus import configure_virtual_cpus
from trainer.core import precision
from trainer.core.config import parse_gin
from trainer.core.model_state import build_model_state
from trainer.core.train_step import StepOptions
from trainer.core.trainer import Trainer
from trainer.observe.flops import forward_flops_per_image
from trainer.observe.peak import Peak, matmul_chain_peak
from trainer.run_config import RunConfig
from trainer.tools.model_stats import build_configured_model

# Issue #5's bar for a stable median; fewer are accepted (e.g. at 513x513 on a CPU) and flagged in the report.
RECOMMENDED_TIMED_STEPS = 20
_PEAK_DTYPES = {
    precision.Precision.FLOAT32: tf.float32,
    precision.Precision.MIXED_BFLOAT16: tf.bfloat16,
    precision.Precision.MIXED_FLOAT16: tf.float16,
}


@dataclasses.dataclass(frozen=True)
class CropResult:
    """What one crop size measured. Times are seconds, throughputs per second."""

    crop: int
    model: str
    parameters: int
    precision: str
    jit_compile: bool
    global_batch_size: int
    replicas: int
    timed_steps: int
    examples_per_second: float
    step_seconds_median: float
    bare_examples_per_second: float
    bare_step_seconds_median: float
    trainer_overhead: float
    first_step_seconds: float
    forward_gflops_per_image: float
    training_tflops_per_second: float
    mfu: float
    peak_rss_mib: float
    accelerator_peak_memory_mib: float | None
    final_loss: float


def _parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.bench train",
        description="Training throughput, MFU and trainer overhead of a gin config on this machine.",
    )
    parser.add_argument("--config", action="append", required=True, help="gin file (repeatable), e.g. the model.")
    parser.add_argument("--gin_bindings", action="append", default=[], help="gin binding applied after the files.")
    parser.add_argument("--crop", type=int, action="append", help="square crop size (repeatable; default 256).")
    parser.add_argument("--num_classes", type=int, default=21, help="classes of the classifier (21: PASCAL VOC).")
    parser.add_argument("--timed_steps", type=int, default=RECOMMENDED_TIMED_STEPS, help="timed steps per crop.")
    parser.add_argument("--warmup_steps", type=int, default=3, help="untimed steps after the first one.")
    parser.add_argument("--strategy", default=StrategyName.AUTO.value, help="as the trainer's --strategy.")
    parser.add_argument("--virtual_cpus", type=int, default=0, help="as the trainer's --virtual_cpus (Mirrored).")
    parser.add_argument("--peak_size", type=int, default=4096, help="matrix size of the peak measurement.")
    parser.add_argument("--peak_chain", type=int, default=10, help="dependent matmuls per timed call.")
    parser.add_argument("--peak_repeats", type=int, default=3, help="timed calls; the best one counts.")
    parser.add_argument("--output_json", default=None, help="also write the results to this JSON file.")
    args = parser.parse_args(argv)
    args.crop = args.crop or [256]
    for name in ("timed_steps", "peak_size", "peak_chain", "peak_repeats", "num_classes"):
        if getattr(args, name) < 1:
            parser.error(f"--{name}: expected a positive integer, received {getattr(args, name)}.")
    if args.warmup_steps < 0:
        parser.error(f"--warmup_steps: expected >= 0, received {args.warmup_steps}.")
    if any(crop < 16 for crop in args.crop):
        parser.error(f"--crop: expected sizes >= 16 pixels, received {args.crop}.")
    return args


def machine() -> str:
    """One line naming the CPU (and accelerators) the benchmark ran on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    description = f"{cpu}, {cores} CPU cores"
    accelerators = [
        tf.config.experimental.get_device_details(device).get("device_name", device.name)
        for device in tf.config.list_physical_devices("GPU")
    ]
    if accelerators:
        description += ", " + ", ".join(accelerators)
    return f"{description}; TensorFlow {tf.__version__}"


def _peak_rss_mib() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _accelerator_peak_mib() -> float | None:
    if not tf.config.list_physical_devices("GPU"):
        return None
    return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20


def build_in_memory_trainer(
    crop: int, strategy: tf.distribute.Strategy, config: RunConfig, num_classes: int
) -> tuple[Trainer, tuple[np.ndarray, np.ndarray]]:
    """The trainer `run()` would build for `crop`×`crop` inputs, fed one fixed random batch from memory."""
    train_config = config.train
    keras.backend.clear_session()
    keras.utils.set_random_seed(train_config.seed)
    state = build_model_state(
        strategy,
        lambda: build_configured_model(num_classes),
        (crop, crop),
        train_config,
        config.optimizer,
        config.batch_norm,
    )
    rng = np.random.default_rng(0)
    per_replica = train_config.global_batch_size // strategy.num_replicas_in_sync
    images = rng.uniform(-1.0, 1.0, size=(per_replica, crop, crop, 3)).astype(np.float32)
    labels = rng.integers(0, num_classes, size=(per_replica, crop, crop)).astype(np.int32)
    dataset = strategy.distribute_datasets_from_function(
        lambda context: tf.data.Dataset.from_tensors((images, labels)).repeat()
    )
    options = StepOptions.from_config(train_config, ignore_label=255)
    trainer = Trainer(
        strategy,
        state.model,
        state.optimizer,
        config.loss,
        state.global_step,
        options,
        ema=state.ema,
        batches=lambda: iter(dataset),
    )
    return trainer, (images, labels)


def _time_interleaved(trainer: Trainer, bare, warmup_steps: int, timed_steps: int) -> tuple[float, list, list, dict]:
    """First-step seconds, then the trainer's and the bare step's times, interleaved, and the last outputs."""
    started = time.perf_counter()
    outputs = trainer.train(1)
    first_step_seconds = time.perf_counter() - started
    bare()
    for _ in range(warmup_steps):
        trainer.train(1)
        bare()
    trainer_seconds, bare_seconds = [], []
    # Interleaved, so a slow phase of a shared machine hits both and the ratio stays meaningful.
    for _ in range(timed_steps):
        started = time.perf_counter()
        outputs = trainer.train(1)
        trainer_seconds.append(time.perf_counter() - started)
        started = time.perf_counter()
        bare()
        bare_seconds.append(time.perf_counter() - started)
    return first_step_seconds, trainer_seconds, bare_seconds, outputs


def benchmark_crop(
    crop: int,
    strategy: tf.distribute.Strategy,
    config: RunConfig,
    num_classes: int,
    peak: Peak,
    timed_steps: int,
    warmup_steps: int,
) -> CropResult:
    """Builds the configured trainer for `crop`×`crop` inputs, times it and the bare step; see the module doc."""
    train_config = config.train
    global_batch, replicas = train_config.global_batch_size, strategy.num_replicas_in_sync
    trainer, (images, labels) = build_in_memory_trainer(crop, strategy, config, num_classes)
    model = trainer.model
    flops = forward_flops_per_image(model, crop, crop)
    bare_step, bare_batch = bare_train_step(
        strategy, model, trainer.optimizer, train_config.jit_compile, images, labels
    )

    def bare() -> None:
        strategy.experimental_local_results(bare_step(bare_batch))[0].numpy()

    first_step_seconds, trainer_seconds, bare_seconds, outputs = _time_interleaved(
        trainer, bare, warmup_steps, timed_steps
    )
    if not outputs["all_finite"]:
        raise FloatingPointError(f"crop {crop}: the training loss became NaN or Inf during the benchmark.")
    step_seconds = statistics.median(trainer_seconds)
    bare_step_seconds = statistics.median(bare_seconds)
    examples_per_second = global_batch / step_seconds
    training_flops_per_second = 3.0 * flops.total * examples_per_second
    backbone = getattr(model, "backbone", None)
    return CropResult(
        crop=crop,
        model=type(model).__name__ + (f" with {type(backbone).__name__}" if backbone is not None else ""),
        parameters=model.count_params(),
        precision=precision.parse(train_config.precision).value,
        jit_compile=train_config.jit_compile,
        global_batch_size=global_batch,
        replicas=replicas,
        timed_steps=timed_steps,
        examples_per_second=examples_per_second,
        step_seconds_median=step_seconds,
        bare_examples_per_second=global_batch / bare_step_seconds,
        bare_step_seconds_median=bare_step_seconds,
        trainer_overhead=step_seconds / bare_step_seconds - 1.0,
        first_step_seconds=first_step_seconds,
        forward_gflops_per_image=flops.total / 1e9,
        training_tflops_per_second=training_flops_per_second / 1e12,
        mfu=training_flops_per_second / peak.flops_per_second,
        peak_rss_mib=_peak_rss_mib(),
        accelerator_peak_memory_mib=_accelerator_peak_mib(),
        final_loss=float(outputs["loss"]),
    )


def bare_train_step(
    strategy: tf.distribute.Strategy,
    model: keras.Model,
    optimizer: keras.optimizers.Optimizer,
    jit_compile: bool,
    images: np.ndarray,
    labels: np.ndarray,
):
    """A textbook distributed train step (forward, mean cross-entropy, backward, apply) and its batch on device."""
    variables = model.trainable_variables
    scales_loss = precision.uses_loss_scaling(optimizer)

    def forward_backward(images: tf.Tensor, labels: tf.Tensor) -> list[tf.Tensor]:
        with tf.GradientTape() as tape:
            logits = tf.cast(model(images, training=True), tf.float32)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
            objective = optimizer.get_scaled_loss(loss) if scales_loss else loss
        return loss, tape.gradient(objective, variables)

    if jit_compile:
        forward_backward = tf.function(forward_backward, jit_compile=True)

    def replica_step(images: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
        loss, gradients = forward_backward(images, labels)
        if scales_loss:
            gradients = optimizer.get_unscaled_gradients(gradients)
        optimizer.apply_gradients(zip(gradients, variables, strict=True))
        return loss

    @tf.function
    def step(batch):
        return strategy.run(replica_step, args=batch)

    # Placed on every replica's device once, so no step pays a host-to-device copy.
    batch = strategy.experimental_distribute_values_from_function(
        lambda context: (tf.constant(images), tf.constant(labels))
    )
    return step, batch


def format_report(
    config: str, machine: str, setting: str, peaks: dict[str, Peak], results: Sequence[CropResult]
) -> str:
    """The benchmark's printed report: the setting, the peaks and one Markdown table row per crop."""
    peak_text = ", ".join(f"{dtype} {p.flops_per_second / 1e9:,.1f} GFLOP/s" for dtype, p in peaks.items())
    any_peak = next(iter(peaks.values()))
    lines = [
        f"DeepLab Trainer training benchmark: {config}",
        f"model: {results[0].model}, {results[0].parameters:,} parameters; {setting}",
        f"machine: {machine}",
        f"dense peak ({any_peak.chain} chained {any_peak.size}x{any_peak.size} matmuls in one tf.function, best of "
        f"{len(any_peak.seconds)}): {peak_text}",
        "",
        "| crop | precision | XLA | global batch | examples/s | ms/step (median) | GFLOPs/image (fwd) | train TFLOP/s "
        "| MFU | bare step examples/s | trainer overhead | time to first step | peak RSS |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        few = "" if r.timed_steps >= RECOMMENDED_TIMED_STEPS else f" ({r.timed_steps} steps)"
        memory = f"{r.peak_rss_mib / 1024:.2f} GiB"
        if r.accelerator_peak_memory_mib is not None:
            memory += f" (device {r.accelerator_peak_memory_mib / 1024:.2f} GiB)"
        lines.append(
            f"| {r.crop}x{r.crop} | {r.precision} | {'yes' if r.jit_compile else 'no'} | {r.global_batch_size} | "
            f"{r.examples_per_second:.2f} | {1000 * r.step_seconds_median:.1f}{few} | "
            f"{r.forward_gflops_per_image:.2f} | {r.training_tflops_per_second:.3f} | {100 * r.mfu:.1f}% | "
            f"{r.bare_examples_per_second:.2f} | {100 * r.trainer_overhead:+.1f}% | {r.first_step_seconds:.1f} s | "
            f"{memory} |"
        )
    if any(r.timed_steps < RECOMMENDED_TIMED_STEPS for r in results):
        lines.append(f"(fewer than {RECOMMENDED_TIMED_STEPS} timed steps: the median is less stable)")
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    """Runs the benchmark for every `--crop`; prints the report (and writes `--output_json`). Returns 0."""
    args = _parse_args(argv)
    parse_gin(args.config, args.gin_bindings)
    configure_virtual_cpus(args.virtual_cpus)
    strategy = create_strategy(args.strategy, mirrored=MirroredConfig(), multi_worker=MultiWorkerConfig())
    config = train_lib.configure(strategy)
    run_precision = precision.parse(config.train.precision)

    peaks = {}
    for dtype in dict.fromkeys([tf.float32, tf.bfloat16, _PEAK_DTYPES[run_precision]]):
        peaks[dtype.name] = matmul_chain_peak(dtype, args.peak_size, args.peak_chain, args.peak_repeats)
    run_peak = peaks[_PEAK_DTYPES[run_precision].name]

    results = []
    for crop in args.crop:
        results.append(
            benchmark_crop(crop, strategy, config, args.num_classes, run_peak, args.timed_steps, args.warmup_steps)
        )
    setting = (
        f"{args.num_classes} classes; {type(strategy).__name__} with {strategy.num_replicas_in_sync} replica(s); "
        "random inputs from memory"
    )
    print(format_report(" ".join(args.config), machine(), setting, peaks, results))
    if args.output_json:
        report = {
            "config": args.config,
            "gin_bindings": args.gin_bindings,
            "machine": machine(),
            "setting": setting,
            "peaks": {dtype: dataclasses.asdict(p) for dtype, p in peaks.items()},
            "results": [dataclasses.asdict(r) for r in results],
        }
        with open(args.output_json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
