"""devtools.bench.input_throughput runs end to end on a few small images and reports what it measured."""

import re

import pytest

from devtools.bench import input_throughput

pytestmark = pytest.mark.slow


def test_input_benchmark_reports_rates_and_resume_costs(tmp_path, capsys):
    input_throughput.main(
        [
            "input",
            "--num_images=12",
            "--crop_size=64",
            "--batch_size=2",
            "--num_batches=2",
            "--warmup_batches=1",
            "--threads=1,2",
            f"--data_dir={tmp_path}",
            "--resume_cost",
        ]
    )
    out = capsys.readouterr().out
    assert "11 training images of 500x375" in out
    rates = [float(rate) for rate in re.findall(r"(\d+\.\d) examples/s", out)]
    assert len(rates) == 2 and all(rate > 0 for rate in rates)
    assert re.search(r"iterator checkpoint: save \d+\.\d\d s, \d+\.\d MiB", out)
    assert len(re.findall(r"skip ahead to step \d+", out)) == 3
