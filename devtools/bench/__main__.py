"""`python -m devtools.bench <benchmark> [flags]`: `train` (in-memory throughput, MFU), `e2e` (the real trainer on
TFRecords beside the in-memory step), `compare` (against TF Model Garden), `scaling` (crop, batch, replicas) or
`input` (tf.data throughput)."""

import sys
from collections.abc import Sequence

from devtools.bench import compare, end_to_end, input_throughput, scaling, train_throughput

BENCHMARKS = {
    "train": train_throughput.main,
    "e2e": end_to_end.main,
    "compare": compare.main,
    "scaling": scaling.main,
    # input_throughput.main parses argv with argparse, program name first.
    "input": lambda args: input_throughput.main(["python -m devtools.bench input", *args]),
}


def main(argv: Sequence[str]) -> int:
    """Dispatches to the benchmark named by the first argument."""
    if not argv or argv[0] not in BENCHMARKS:
        received = repr(argv[0]) if argv else "nothing"
        print(
            f"usage: python -m devtools.bench {{{', '.join(BENCHMARKS)}}} [flags]; expected a benchmark name, "
            f"received {received}. Try: python -m devtools.bench train --help",
            file=sys.stderr,
        )
        return 2
    return BENCHMARKS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
