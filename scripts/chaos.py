"""Repeats random SIGKILL/SIGTERM/resume cycles on a small config; reports lost checkpoints and mismatches.

    python scripts/chaos.py --trials=20 --work_dir=/tmp/chaos
    python scripts/chaos.py --mode=scheduler --trials=20 --work_dir=/tmp/chaos_scheduler

`--mode=scheduler` does what Kubernetes or Slurm do to a preempted job: SIGTERM at a random step inside a host
loop of `train.steps_per_loop=500` steps, SIGKILL if the run is still alive `--grace_seconds` later, then the
job restarted; the run must save the step it reached and exit with `preemption.exit_code`.

Every trial must end with weights bitwise equal to an uninterrupted run (op determinism on), and no
interruption may lose a checkpoint the run had reported saved. Exits non-zero if either happened.
"""

import json
import os
import sys
import time

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from devtools import chaos  # noqa: E402
from trainer.cluster.preemption import EXIT_CODE_PREEMPTED  # noqa: E402

_TRIALS = flags.DEFINE_integer("trials", 20, "Number of trials.")
_STEPS = flags.DEFINE_integer("steps", 12, "Training steps of each run.")
_MAX_INTERRUPTIONS = flags.DEFINE_integer("max_interruptions", 2, "Interruptions per trial: 1 to this many.")
_SEED = flags.DEFINE_integer("seed", 0, "Seeds the choice of signals and steps.")
_WORK_DIR = flags.DEFINE_string("work_dir", "/tmp/deeplab_chaos", "Where runs, data and logs go.")
_GIN_FILE = flags.DEFINE_string("gin_file", "configs/smoke.gin", "The (small) config to train.")
_MODE = flags.DEFINE_enum("mode", "kill", ["kill", "scheduler"], "kill: SIGKILL/SIGTERM; scheduler: SIGTERM+grace.")
_GRACE_SECONDS = flags.DEFINE_float("grace_seconds", 30.0, "Scheduler mode: seconds from SIGTERM to SIGKILL.")
_SCHEDULER_LOOP = 500

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _flags(model_dir: str) -> list[str]:
    scheduler = _MODE.value == "scheduler"
    return [
        f"--gin_file={os.path.join(REPO_ROOT, _GIN_FILE.value)}",
        f"--gin_bindings=synthetic_shapes.data_dir='{os.path.join(_WORK_DIR.value, 'data')}'",
        f"--gin_bindings=train.steps={_STEPS.value}",
        f"--gin_bindings=train.steps_per_loop={_SCHEDULER_LOOP if scheduler else 1}",
        f"--gin_bindings=train.checkpoint_every_steps={_SCHEDULER_LOOP if scheduler else 3}",
        f"--gin_bindings=preemption.grace_seconds={_GRACE_SECONDS.value}",
        "--gin_bindings=train.deterministic=True",
        f"--model_dir={model_dir}",
        "--mode=train",
        "--strategy=one_device",
    ]


def main(argv: list[str]) -> None:
    del argv
    os.makedirs(_WORK_DIR.value, exist_ok=True)
    log_path = os.path.join(_WORK_DIR.value, "trainer.log")
    reference_dir = os.path.join(_WORK_DIR.value, "reference")
    started = time.monotonic()
    if chaos.train_to_completion(_flags(reference_dir), log_path, timeout=900, cwd=REPO_ROOT) != 0:
        sys.exit(f"The uninterrupted reference run failed; see {log_path}.")
    _, reference = chaos.checkpoint_values(reference_dir)
    rng = np.random.default_rng(_SEED.value)
    if _MODE.value == "scheduler":
        summary = _scheduler_trials(rng, reference, log_path)
    else:
        summary = _kill_trials(rng, reference, log_path)
    summary["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(summary, indent=2))
    with open(os.path.join(_WORK_DIR.value, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    if summary["checkpoints_lost"] or summary["resume_mismatches"] or summary["unexpected_exit_codes"]:
        sys.exit(1)


def _scheduler_trials(rng: np.random.Generator, reference: dict, log_path: str) -> dict:
    """SIGTERM inside the second host loop (a random delay after the first one's end), SIGKILL after the grace."""
    stops, mismatches = [], 0
    for trial in range(_TRIALS.value):
        model_dir = os.path.join(_WORK_DIR.value, f"trial_{trial:03d}")
        flags_ = _flags(model_dir)
        delay = float(rng.uniform(0.0, 10.0))
        stop = chaos.preempt_run(
            flags_, model_dir, _SCHEDULER_LOOP, delay, _GRACE_SECONDS.value, log_path, 900, REPO_ROOT
        )
        stops.append(stop)
        resumed = chaos.train_to_completion(flags_, log_path, 900, REPO_ROOT)
        final_step, values = chaos.checkpoint_values(model_dir)
        mismatched = chaos.mismatched_keys(reference, values) if resumed == 0 else ["<resumed run failed>"]
        mismatches += bool(mismatched)
        print(
            f"trial {trial:3d}: SIGTERM {delay:.1f} s after step {_SCHEDULER_LOOP} (logged at step "
            f"{stop.sigterm_step}) → exit {stop.exit_code} after {stop.seconds_to_exit:.1f} s, saved step "
            f"{stop.preempted_step}, restorable {stop.restorable_step}; final step {final_step}; "
            f"{'bitwise equal' if not mismatched else f'MISMATCH in {len(mismatched)} variables'}",
            flush=True,
        )
    preempted = [s for s in stops if s.preempted_step is not None]
    latencies = sorted(s.seconds_to_exit for s in preempted)
    return {
        "mode": "scheduler",
        "trials": len(stops),
        "preempted": len(preempted),
        "finished_before_signal": sum(s.exit_code == 0 for s in stops),
        "killed_after_grace": sum(s.killed_after_grace for s in stops),
        "max_steps_after_signal": max((s.steps_after_signal for s in preempted), default=None),
        "signal_to_exit_seconds_median": latencies[len(latencies) // 2] if latencies else None,
        "signal_to_exit_seconds_max": latencies[-1] if latencies else None,
        "checkpoints_lost": sum(s.lost_checkpoint for s in stops),
        "resume_mismatches": mismatches,
        "unexpected_exit_codes": sum(s.exit_code not in (EXIT_CODE_PREEMPTED, 0) for s in stops),
    }


def _kill_trials(rng: np.random.Generator, reference: dict, log_path: str) -> dict:
    results = []
    for trial in range(_TRIALS.value):
        model_dir = os.path.join(_WORK_DIR.value, f"trial_{trial:03d}")
        result = chaos.run_trial(
            rng,
            _flags(model_dir),
            model_dir,
            _STEPS.value,
            reference,
            _MAX_INTERRUPTIONS.value,
            log_path,
            cwd=REPO_ROOT,
        )
        results.append(result)
        events = ", ".join(
            f"{i.signal_name}@{i.after_step}→exit {i.exit_code}, kept step {i.restorable_step}"
            for i in result.interruptions
        )
        print(
            f"trial {trial:3d}: {events or 'no interruption'}; final step {result.final_step}; "
            f"{'bitwise equal' if not result.mismatched else f'MISMATCH in {len(result.mismatched)} variables'}",
            flush=True,
        )
    return {
        "trials": len(results),
        "interruptions": sum(len(r.interruptions) for r in results),
        "sigkill": sum(i.signal_name == "SIGKILL" for r in results for i in r.interruptions),
        "sigterm": sum(i.signal_name == "SIGTERM" for r in results for i in r.interruptions),
        "checkpoints_lost": sum(r.lost_checkpoints for r in results),
        "resume_mismatches": sum(bool(r.mismatched) for r in results),
        "unexpected_exit_codes": sum(not i.exit_as_documented for r in results for i in r.interruptions),
    }


if __name__ == "__main__":
    app.run(main)
