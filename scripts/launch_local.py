"""Runs an N-worker MultiWorkerMirrored training job on this machine, restarting it when a worker fails.

    python scripts/launch_local.py --workers=2 --max_restarts=3 -- \
        --gin_file=configs/multi_worker.gin --model_dir=runs/mw

Everything after `--` goes to every worker (`python -m trainer ...`); each worker gets its TF_CONFIG on free
127.0.0.1 ports, its output is prefixed with `[worker i]`, and the exit code is the job's (0 when every worker
finished). The logic lives in `trainer.cluster.launch`.
"""

import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from trainer.cluster import launch  # noqa: E402
from trainer.common.errors import UserInputError  # noqa: E402

_WORKERS = flags.DEFINE_integer("workers", 2, "Number of local worker processes.")
_MAX_RESTARTS = flags.DEFINE_integer("max_restarts", 0, "How many times to restart all workers after a failure.")


def main(argv: list[str]) -> None:
    try:
        sys.exit(launch.launch(_WORKERS.value, argv[1:], max_restarts=_MAX_RESTARTS.value))
    except UserInputError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    app.run(main)
