"""What a user watches, end to end: `run()` on the smoke config under Mirrored (2 logical CPUs), read back
with TensorBoard's own event reader: every train scalar, the eval image panels, the config and manifest text,
the manifest file, the console lines and a profiler trace."""

import glob
import json
import os

import gin
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

from tests.helpers import mirrored_strategy, parse_smoke_config, scalar_events, text_tags
from trainer import train_lib
from trainer.common.images import colorize
from trainer.core.config import Mode
from trainer.data.synthetic import synthetic_shapes
from trainer.models import DeepLabV3Plus
from trainer.observe import visualize

pytestmark = pytest.mark.slow

SMOKE_SIZE = 48  # configs/smoke.gin: 48x48 images, eval at that size
TRAIN_TAGS = (
    "loss",
    "learning_rate",
    "steps_per_sec",
    "examples_per_sec",
    "input_wait_fraction",
    "flops_per_sec",
    "mfu",
    "host_memory_gib",
)


def image_events(log_dir: str) -> dict[str, list[tuple[int, list[np.ndarray]]]]:
    """Reads every image summary in `log_dir`: tag -> [(step, [decoded uint8 images])]."""
    accumulator = event_accumulator.EventAccumulator(log_dir, size_guidance={event_accumulator.TENSORS: 0})
    accumulator.Reload()
    events = {}
    for tag in accumulator.Tags()["tensors"]:
        if accumulator.SummaryMetadata(tag).plugin_data.plugin_name != "images":
            continue
        events[tag] = []
        for event in accumulator.Tensors(tag):
            # An image summary is the string tensor [width, height, png, png, ...].
            encoded = tf.make_ndarray(event.tensor_proto)[2:]
            events[tag].append((event.step, [tf.io.decode_png(png).numpy() for png in encoded]))
    return events


def text_value(log_dir: str, tag: str) -> str:
    accumulator = event_accumulator.EventAccumulator(log_dir, size_guidance={event_accumulator.TENSORS: 0})
    accumulator.Reload()
    return tf.make_ndarray(accumulator.Tensors(tag)[-1].tensor_proto).item().decode()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One train_and_eval run of 6 steps (evaluations at 3 and 6), profiling steps 4 to 5, with its stdout."""
    root = tmp_path_factory.mktemp("observe")
    model_dir = str(root / "run")
    # Small peak matmuls: the chain method at 4096² would take most of this test's time on a CPU.
    parse_smoke_config(str(root / "data"), "observe.num_eval_images = 3", "observe.peak_matmul_size = 256")
    capture = root / "stdout.txt"
    with open(capture, "w") as stream, pytest.MonkeyPatch.context() as patch:
        patch.setattr("sys.stdout", stream)
        report = train_lib.run("train_and_eval", model_dir, strategy=mirrored_strategy(), profile_steps="4,5")
    gin.clear_config()
    return model_dir, report, capture.read_text()


def test_every_train_scalar_is_written_at_every_loop(finished_run):
    model_dir, _, _ = finished_run
    events = scalar_events(os.path.join(model_dir, "train"))
    for tag in TRAIN_TAGS:
        assert [step for step, _ in events[tag]] == [3, 6], tag
    for step, value in events["input_wait_fraction"] + events["mfu"]:
        assert 0.0 <= value <= 1.0, step
    for _, value in events["flops_per_sec"] + events["host_memory_gib"]:
        assert value > 0
    # Achieved FLOP/s is the measured throughput times the model's FLOPs per example: the ratio is constant.
    ratios = [f / e for (_, f), (_, e) in zip(events["flops_per_sec"], events["examples_per_sec"], strict=True)]
    np.testing.assert_allclose(ratios[0], ratios[1], rtol=1e-6)


def test_eval_panels_show_the_same_examples_at_every_evaluation(finished_run):
    model_dir, _, _ = finished_run
    events = image_events(os.path.join(model_dir, "eval"))
    assert sorted(events) == ["eval_examples/0", "eval_examples/1", "eval_examples/2"]
    panel_width = len(visualize.EVAL_PANELS) * SMOKE_SIZE + (len(visualize.EVAL_PANELS) - 1) * visualize.PANEL_GAP
    for tag, steps in events.items():
        assert [step for step, _ in steps] == [3, 6], tag
        first, last = steps[0][1][0], steps[1][1][0]
        assert first.shape == last.shape == (SMOKE_SIZE, panel_width, 3), tag
        # The input and ground-truth panels (left half) are the same example at both evaluations.
        left = 2 * SMOKE_SIZE + visualize.PANEL_GAP
        np.testing.assert_array_equal(first[:, :left], last[:, :left])
        # Every gap between panels is white.
        for index in range(1, len(visualize.EVAL_PANELS)):
            column = index * (SMOKE_SIZE + visualize.PANEL_GAP) - 1
            assert (first[:, column] == 255).all(), (tag, column)
    legend = text_value(os.path.join(model_dir, "eval"), "eval_examples/legend")
    assert "| disk | 1 | (128, 0, 0) |" in legend


def test_eval_panel_prediction_is_the_models_argmax(finished_run):
    model_dir, _, _ = finished_run
    # The prediction panel (third) of example 0 at the last evaluation, against the final model's prediction.
    parse_smoke_config(os.path.join(os.path.dirname(model_dir), "data"))
    try:
        strategy = mirrored_strategy()
        config = train_lib.configure(strategy)
        state = train_lib.build_context(Mode.EVAL, model_dir, strategy, synthetic_shapes(), DeepLabV3Plus, config)
        state.checkpointer.restore_latest()
        images, labels = visualize.fixed_eval_examples(config.input_pipeline, state.info, 1)
        predicted = visualize.predict_classes(state.state.model, images)
        state.close()
    finally:
        gin.clear_config()
    expected = colorize(predicted, visualize.dataset_palette(state.info), state.info.ignore_label)[0]
    panel = image_events(os.path.join(model_dir, "eval"))["eval_examples/0"][-1][1][0]
    start = 2 * (SMOKE_SIZE + visualize.PANEL_GAP)
    np.testing.assert_array_equal(panel[:, start : start + SMOKE_SIZE], expected)


def test_config_and_manifest_are_written_as_text_and_json(finished_run):
    model_dir, _, _ = finished_run
    train_dir = os.path.join(model_dir, "train")
    assert {"operative_config", "manifest"} <= set(text_tags(train_dir))
    assert "train.steps = 6" in text_value(train_dir, "operative_config")
    with open(os.path.join(model_dir, "manifest.json")) as f:
        manifest = json.load(f)
    assert manifest["strategy"]["name"] == "mirrored"
    assert manifest["strategy"]["class"] == "MirroredStrategy"
    assert manifest["strategy"]["num_replicas_in_sync"] == 2
    assert manifest["mode"] == "train_and_eval" and manifest["start_step"] == 0
    assert manifest["packages"]["tensorflow"] == tf.__version__
    assert "MirroredStrategy" in text_value(train_dir, "manifest")
    assert not glob.glob(os.path.join(model_dir, "*.tmp-*"))


def test_console_shows_plain_progress_lines_and_a_summary(finished_run):
    _, _, stdout = finished_run
    assert "\r" not in stdout and "\x1b" not in stdout
    lines = stdout.splitlines()
    progress = [line for line in lines if line.startswith("step ")]
    assert [line.split()[1] for line in progress] == ["3/6", "6/6"]
    assert all("loss " in line and "examples/s" in line and "ETA " in line for line in progress)
    assert "Training summary" in lines
    assert any(line.startswith("MFU") for line in lines)


def test_profile_steps_capture_a_trace(finished_run):
    model_dir, _, _ = finished_run
    # Steps 4-5 lie in the second host loop (steps 3 to 6), which is traced whole.
    assert len(glob.glob(os.path.join(model_dir, "train", "plugins", "profile", "*", "*.xplane.pb"))) == 1
