"""Repeats random SIGKILL/SIGTERM/resume cycles on a small config; reports lost checkpoints and mismatches.

    python scripts/chaos.py --trials=20 --work_dir=/tmp/chaos

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

_TRIALS = flags.DEFINE_integer("trials", 20, "Number of trials.")
_STEPS = flags.DEFINE_integer("steps", 12, "Training steps of each run.")
_MAX_INTERRUPTIONS = flags.DEFINE_integer("max_interruptions", 2, "Interruptions per trial: 1 to this many.")
_SEED = flags.DEFINE_integer("seed", 0, "Seeds the choice of signals and steps.")
_WORK_DIR = flags.DEFINE_string("work_dir", "/tmp/deeplab_chaos", "Where runs, data and logs go.")
_GIN_FILE = flags.DEFINE_string("gin_file", "configs/smoke.gin", "The (small) config to train.")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _flags(model_dir: str) -> list[str]:
    return [
        f"--gin_file={os.path.join(REPO_ROOT, _GIN_FILE.value)}",
        f"--gin_bindings=synthetic_shapes.data_dir='{os.path.join(_WORK_DIR.value, 'data')}'",
        f"--gin_bindings=train.steps={_STEPS.value}",
        "--gin_bindings=train.steps_per_loop=1",
        "--gin_bindings=train.checkpoint_every_steps=3",
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
    summary = {
        "trials": len(results),
        "interruptions": sum(len(r.interruptions) for r in results),
        "sigkill": sum(i.signal_name == "SIGKILL" for r in results for i in r.interruptions),
        "sigterm": sum(i.signal_name == "SIGTERM" for r in results for i in r.interruptions),
        "checkpoints_lost": sum(r.lost_checkpoints for r in results),
        "resume_mismatches": sum(bool(r.mismatched) for r in results),
        "unexpected_exit_codes": sum(not i.exit_as_documented for r in results for i in r.interruptions),
        "seconds": round(time.monotonic() - started, 1),
    }
    print(json.dumps(summary, indent=2))
    with open(os.path.join(_WORK_DIR.value, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    if summary["checkpoints_lost"] or summary["resume_mismatches"] or summary["unexpected_exit_codes"]:
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
