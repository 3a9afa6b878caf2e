"""The training benchmark tooling: FLOP counting, the matmul peak, a tiny end-to-end run (no timing asserted)."""

import json

import gin
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from devtools.bench import __main__ as bench_main
from devtools.bench import train_throughput
from tests.helpers import REPO_ROOT, SMOKE_GIN
from trainer.core.config import parse_gin
from trainer.observe import flops as model_flops
from trainer.observe import peak
from trainer.tools.model_stats import build_configured_model

pytestmark = pytest.mark.usefixtures("clear_gin")


def test_dilated_convolutions_count_as_undilated_and_matmuls_as_2mnk():
    model = keras.Sequential(
        [
            keras.layers.Conv2D(8, 3, dilation_rate=2, padding="same", input_shape=(17, 17, 3)),
            keras.layers.DepthwiseConv2D(3, dilation_rate=3, padding="same"),
            keras.layers.Conv2D(4, 1, strides=2),
            keras.layers.Dense(5),
        ]
    )
    flops = model_flops.forward_flops_per_image(model, 17, 17)
    # TensorFlow runs the dilated convs on space-to-batch tensors padded to a multiple of the rate; the count
    # uses the 17x17 output positions the architecture defines.
    expected_convolutions = 2 * 17 * 17 * (3 * 3 * 3 * 8 + 3 * 3 * 8) + 2 * 9 * 9 * 8 * 4
    assert flops.convolution == expected_convolutions
    assert flops.matmul == 2 * 9 * 9 * 4 * 5


def test_reference_config_is_deeplab_v3_plus_resnet50_os16():
    parse_gin([f"{REPO_ROOT}/configs/bench_resnet50_os16.gin"], [])
    model = build_configured_model(num_classes=21)
    model(tf.zeros([1, 65, 65, 3]), training=False)
    assert type(model).__name__ == "DeepLabV3Plus" and model.backbone.output_stride == 16
    assert model.count_params() == 40_436_053  # as tests/test_configs.py pins for ResNet-50 DeepLabV3+
    assert gin.query_parameter("train.global_batch_size") == 8
    assert model_flops.forward_flops_per_image(model, 128, 128).total == pytest.approx(8.55e9, rel=1e-3)


def test_matmul_chain_peak_reports_flops_of_the_best_timing():
    result = peak.matmul_chain_peak(tf.float32, size=64, chain=3, repeats=3)
    assert len(result.seconds) == 3
    assert result.flops_per_second == pytest.approx(3 * 2 * 64**3 / min(result.seconds))


def test_train_benchmark_runs_end_to_end_and_reports_consistent_figures(tmp_path, capsys):
    output = tmp_path / "bench.json"
    status = bench_main.main(
        [
            "train",
            f"--config={SMOKE_GIN}",
            "--crop=32",
            "--num_classes=5",
            "--timed_steps=2",
            "--warmup_steps=1",
            "--strategy=one_device",
            "--peak_size=128",
            "--peak_chain=2",
            "--peak_repeats=1",
            f"--output_json={output}",
        ]
    )
    assert status == 0
    printed = capsys.readouterr().out
    assert "| 32x32 | float32 | no | 4 |" in printed and "fewer than 20 timed steps" in printed
    report = json.loads(output.read_text())
    assert set(report["peaks"]) == {"float32", "bfloat16"}
    (result,) = report["results"]
    assert result["global_batch_size"] == 4 and result["timed_steps"] == 2 and np.isfinite(result["final_loss"])
    np.testing.assert_allclose(result["examples_per_second"], 4 / result["step_seconds_median"])
    np.testing.assert_allclose(
        result["mfu"],
        3
        * result["forward_gflops_per_image"]
        * 1e9
        * result["examples_per_second"]
        / report["peaks"]["float32"]["flops_per_second"],
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        result["trainer_overhead"], result["step_seconds_median"] / result["bare_step_seconds_median"] - 1, rtol=1e-6
    )
    assert result["first_step_seconds"] > 0 and result["peak_rss_mib"] > 0


def test_unknown_benchmark_and_bad_flags_are_refused(capsys):
    assert bench_main.main(["inference"]) == 2
    assert "expected a benchmark name, received 'inference'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_throughput.main([f"--config={SMOKE_GIN}", "--timed_steps=0"])
