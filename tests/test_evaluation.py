"""Evaluation: the same confusion matrix under OneDevice and Mirrored, reports, best checkpoint, eval modes."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tests.helpers import mirrored_strategy, one_device_strategy, parse_smoke_config, scalar_events
from trainer import train_lib
from trainer.cluster.tasks import TaskInfo
from trainer.common.errors import UserInputError
from trainer.core import best_checkpoint, eval_report, evaluation, metrics
from trainer.core.config import EvalConfig
from trainer.core.inference import InferenceConfig, predict_logits
from trainer.data.pipeline import InputPipeline
from trainer.data.synthetic import synthetic_shapes
from trainer.models import DeepLabV3Plus, ResNet

pytestmark = pytest.mark.usefixtures("clear_gin")

NUM_EVAL_EXAMPLES = 5  # not a multiple of the global batch: the last batch is padded
GLOBAL_BATCH = 4
EVAL_SIZE = (56, 64)  # larger than the 48x48 images: every example is padded with ignore-labelled pixels
CHIEF = TaskInfo(task_type=None, task_id=0, is_chief=True)


@pytest.fixture(scope="module")
def dataset_info(tmp_path_factory):
    return synthetic_shapes(
        data_dir=str(tmp_path_factory.mktemp("data")),
        image_size=48,
        num_train_examples=4,
        num_eval_examples=NUM_EVAL_EXAMPLES,
        num_shards=1,
    )


def _model(num_classes):
    keras.utils.set_random_seed(1)
    model = DeepLabV3Plus(
        num_classes=num_classes,
        backbone=ResNet(block_depths=(1, 1, 1, 1), base_filters=4, output_stride=16),
        aspp_filters=8,
        aspp_rates=(1, 2, 3),
        low_level_filters=4,
        decoder_filters=8,
    )
    model(tf.zeros([1, 48, 48, 3]), training=False)
    return model


def _evaluator(strategy, info, weights, inference_config, model_dir, writer=None, **eval_settings):
    with strategy.scope():
        model = _model(info.num_classes)
        model.set_weights(weights)
    evaluator = evaluation.Evaluator(
        strategy,
        model,
        info,
        InputPipeline(crop_size=(32, 32), eval_size=EVAL_SIZE),
        EvalConfig(global_batch_size=GLOBAL_BATCH, **eval_settings),
        str(model_dir),
        CHIEF,
        writer or tf.summary.create_noop_writer(),
        inference_config,
    )
    return evaluator, model


def _reference_matrix(info, model, inference_config):
    """Each eval example alone, eagerly, compared with its label over the original 48x48 area only."""
    pipeline = InputPipeline(crop_size=(32, 32), eval_size=EVAL_SIZE)
    matrix = np.zeros([info.num_classes] * 2, np.int64)
    count = 0
    for image, label in pipeline.eval_dataset(info, 1).unbatch():
        label = label.numpy()
        assert (label[48:] == info.ignore_label).all() and (label[:, 48:] == info.ignore_label).all()
        config = inference_config.with_default_crop((32, 32))
        logits = predict_logits(lambda x: model(x, training=False), image[tf.newaxis], info.num_classes, config)
        prediction = tf.argmax(logits[0], axis=-1).numpy()[:48, :48]
        label = label[:48, :48]
        valid = label != info.ignore_label
        np.add.at(matrix, (label[valid], prediction[valid]), 1)
        count += 1
    assert count == NUM_EVAL_EXAMPLES
    return matrix


@pytest.mark.parametrize(
    "inference_config",
    [
        InferenceConfig(),
        InferenceConfig(mode="slide", crop_size=(32, 32), stride=(24, 16), scales=(1.25,), flip=True),
    ],
    ids=["whole", "slide_rescaled_flip"],
)
def test_mirrored_and_one_device_count_every_example_once(dataset_info, tmp_path, inference_config):
    weights = _model(dataset_info.num_classes).get_weights()
    single, model = _evaluator(one_device_strategy(), dataset_info, weights, inference_config, tmp_path)
    mirrored, _ = _evaluator(mirrored_strategy(), dataset_info, weights, inference_config, tmp_path)
    assert mirrored.strategy.num_replicas_in_sync == 2

    single_matrix = single.confusion_matrix()
    mirrored_matrix = mirrored.confusion_matrix()
    np.testing.assert_array_equal(mirrored_matrix, single_matrix)
    # Exactly the labelled pixels of the 5 examples, none dropped, none counted twice, none from padding.
    np.testing.assert_array_equal(single_matrix, _reference_matrix(dataset_info, model, inference_config))
    assert len(np.flatnonzero(single_matrix)) > 1  # several (label, prediction) pairs: not a degenerate check


def test_evaluate_writes_every_metric_to_json_and_tensorboard(dataset_info, tmp_path):
    weights = _model(dataset_info.num_classes).get_weights()
    writer = tf.summary.create_file_writer(str(tmp_path / "eval"))
    evaluator, _ = _evaluator(one_device_strategy(), dataset_info, weights, InferenceConfig(), tmp_path, writer)
    report = evaluator.evaluate(step=7, checkpoint_path="somewhere/ckpt-7")
    writer.close()

    with open(tmp_path / "eval" / "metrics_step_00000007.json") as f:
        saved = json.load(f)
    expected = metrics.segmentation_metrics(np.array(saved["confusion_matrix"]))
    for name in metrics.SCALAR_METRICS:
        assert saved[name] == report[name] == expected[name], name
    assert list(saved["per_class_iou"]) == list(dataset_info.class_names)
    assert saved["num_examples"] == NUM_EVAL_EXAMPLES and saved["checkpoint"] == "somewhere/ckpt-7"
    assert saved["inference"] == {"mode": "whole", "scales": [1.0], "flip": False}

    events = scalar_events(str(tmp_path / "eval"))
    for name in metrics.SCALAR_METRICS:
        assert events[name] == [(7, pytest.approx(report[name], rel=1e-6))], name
    for name, iou in report["per_class_iou"].items():
        if iou is not None:
            assert events[f"iou/{name}"] == [(7, pytest.approx(iou, rel=1e-6))]
    assert not (tmp_path / "best").exists()  # no checkpoint to export was given


def test_console_table_names_classes_and_says_absent_ones_are_left_out():
    report = {
        "step": 3,
        "checkpoint": "run/checkpoints/ckpt-3",
        "miou": 0.5,
        "macc": 0.6,
        "pixel_accuracy": 0.9,
        "fwiou": 0.8,
        "per_class_iou": {"background": 0.9, "disk": None, "square": 0.1},
        "per_class_accuracy": {"background": 0.95, "disk": None, "square": 0.25},
        "absent_classes": ["disk"],
        "num_pixels": 12345,
        "num_examples": 5,
        "inference": {"mode": "slide", "scales": [0.5, 1.0], "flip": True, "crop_size": [32, 32], "stride": [8, 8]},
        "seconds": 1.25,
    }
    table = eval_report.format_report(report)
    assert "step 3" in table and "sliding window, scales 0.5, 1, flip" in table and "12,345 labelled pixels" in table
    rows = {line.split()[0]: line.split()[1:] for line in table.splitlines()[2:5]}
    assert rows == {
        "background": ["0.9000", "0.9500"],
        "disk": ["nan", "nan", "(absent)"],
        "square": ["0.1000", "0.2500"],
    }
    assert "mIoU 0.5000  mAcc 0.6000  aAcc 0.9000  fwIoU 0.8000" in table
    assert "absent from both labels and predictions (disk)" in table and "left out of mIoU and mAcc" in table


def _save_checkpoint(directory, step):
    """A real checkpoint whose variable holds its step, so copies can be told apart."""
    checkpoint = tf.train.Checkpoint(global_step=tf.Variable(step, dtype=tf.int64))
    return checkpoint.write(os.path.join(directory, f"ckpt-{step}"))


def _best_step(directory):
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(directory))
    return int(reader.get_tensor("global_step/.ATTRIBUTES/VARIABLE_VALUE"))


def test_best_checkpoint_follows_the_metric_and_replaces_files_atomically(tmp_path):
    checkpoints = str(tmp_path / "checkpoints")
    best_dir = str(tmp_path / "best")
    best = best_checkpoint.BestCheckpoint(best_dir, "pixel_accuracy")
    values = {1: 0.5, 2: 0.4, 3: 0.7, 4: float("nan"), 5: 0.7}
    exported = []
    for step, value in values.items():
        path = _save_checkpoint(checkpoints, step)
        report = {"step": step, "checkpoint": path, "pixel_accuracy": value, "miou": 1.0 - value}
        if best.update(report, path):
            exported.append(step)
        with open(os.path.join(best_dir, "info.json")) as f:
            info = json.load(f)
        # After every evaluation best/ holds exactly one consistent checkpoint: the best so far.
        assert info["step"] == _best_step(best_dir) == max((s for s in values if s <= step and s != 4), key=values.get)
        assert sorted(os.listdir(best_dir)) == sorted(
            ["checkpoint", "info.json", f"ckpt-{info['step']}.index", f"ckpt-{info['step']}.data-00000-of-00001"]
        )
    assert exported == [1, 3]  # 0.4 is worse, NaN never wins, a tie keeps the earlier checkpoint
    assert info == {
        "step": 3,
        "metric": "pixel_accuracy",
        "value": 0.7,
        "checkpoint": "ckpt-3",
        "source": os.path.join(checkpoints, "ckpt-3"),
    }

    # A restarted job picks the record up; with another metric it starts over.
    assert not best_checkpoint.BestCheckpoint(best_dir, "pixel_accuracy").is_better(0.7)
    restarted = best_checkpoint.BestCheckpoint(best_dir, "miou")
    assert restarted.is_better(0.0)
    restarted.update({"step": 2, "checkpoint": "x", "miou": 0.6}, os.path.join(checkpoints, "ckpt-2"))
    assert _best_step(best_dir) == 2 and not os.path.exists(os.path.join(best_dir, "ckpt-3.index"))


def test_an_unknown_best_metric_is_a_config_error(dataset_info, tmp_path):
    weights = _model(dataset_info.num_classes).get_weights()
    with pytest.raises(UserInputError, match=r"evaluation.best_metric: expected one of \{miou, macc.*received 'mious'"):
        _evaluator(one_device_strategy(), dataset_info, weights, None, tmp_path, best_metric="mious")


def test_a_non_positive_continuous_timeout_is_a_config_error():
    with pytest.raises(UserInputError, match="evaluation.continuous_timeout_secs: expected a positive number"):
        EvalConfig(continuous_timeout_secs=0)


@pytest.mark.slow
def test_eval_mode_evaluates_the_checkpoint_asked_for(tmp_path):
    data_dir = str(tmp_path / "data")
    model_dir = str(tmp_path / "run")
    parse_smoke_config(data_dir)
    final = train_lib.run("train_and_eval", model_dir, strategy=one_device_strategy())
    with open(os.path.join(model_dir, "eval", "metrics_step_00000003.json")) as f:
        at_step_3 = json.load(f)

    parse_smoke_config(data_dir)
    again = train_lib.run(
        "eval", model_dir, strategy=one_device_strategy(), checkpoint=os.path.join(model_dir, "checkpoints", "ckpt-3")
    )
    assert again["step"] == 3 and again["miou"] == at_step_3["miou"]
    assert again["confusion_matrix"] == at_step_3["confusion_matrix"]

    parse_smoke_config(data_dir)
    from_best = train_lib.run("eval", model_dir, strategy=one_device_strategy(), checkpoint=f"{model_dir}/best")
    with open(os.path.join(model_dir, "best", "info.json")) as f:
        info = json.load(f)
    assert from_best["step"] == info["step"] and from_best["miou"] == info["value"]
    assert info["value"] == max(at_step_3["miou"], final["miou"])

    parse_smoke_config(data_dir)
    with pytest.raises(UserInputError, match="--checkpoint=.*expected only with --mode=eval, received --mode=train"):
        train_lib.run("train", model_dir, strategy=one_device_strategy(), checkpoint=f"{model_dir}/best")


@pytest.mark.slow
def test_continuous_eval_gives_up_after_the_timeout_without_writing_anything(tmp_path):
    parse_smoke_config(str(tmp_path / "data"), "evaluation.continuous_timeout_secs = 1")
    model_dir = tmp_path / "run"
    assert train_lib.run("continuous_eval", str(model_dir), strategy=one_device_strategy()) is None
    written = sorted(str(p.relative_to(model_dir)) for p in model_dir.rglob("*") if p.is_file())
    assert all(path.startswith("eval/events.out.tfevents") for path in written), written
