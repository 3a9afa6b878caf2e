"""Config parsing: enums checked in one place, gin errors that name the binding and suggest a fix."""

import pytest

from trainer import train_lib  # noqa: F401  (registers every configurable)
from trainer.cluster.strategies import StrategyName
from trainer.common.errors import UserInputError
from trainer.core.config import Mode, TrainConfig, parse_gin

pytestmark = pytest.mark.usefixtures("clear_gin")


def test_enums_parse_values_and_reject_others_naming_the_flag():
    assert Mode.parse("train_and_eval") is Mode.TRAIN_AND_EVAL
    assert StrategyName.parse("multi_worker_mirrored") is StrategyName.MULTI_WORKER_MIRRORED
    modes = r"\{train, eval, train_and_eval, continuous_eval, export\}"
    with pytest.raises(UserInputError, match=rf"--mode: expected one of {modes}, received 'fit'"):
        Mode.parse("fit")
    with pytest.raises(UserInputError, match="--strategy: expected one of"):
        StrategyName.parse("horovod")


@pytest.mark.parametrize(
    "binding, message",
    [
        ("trian.steps = 3", "No configurable matching 'trian'. Did you mean 'train'?"),
        ("train.stepz = 3", "Configurable 'train' doesn't have a parameter named 'stepz'. Did you mean 'steps'?"),
        ("optimizer.learning_rat = 0.1", "Did you mean 'learning_rate'?"),
    ],
)
def test_bad_bindings_name_the_binding_and_suggest_the_nearest(binding, message):
    with pytest.raises(UserInputError) as error:
        parse_gin([], [binding])
    assert str(error.value).startswith(f"--gin_bindings={binding!r}: ")
    assert message in str(error.value)


def test_a_missing_gin_file_is_named(tmp_path):
    with pytest.raises(UserInputError, match="--gin_file=.*nope.gin: cannot read it"):
        parse_gin([str(tmp_path / "nope.gin")], [])


def test_bindings_apply_and_values_are_validated():
    parse_gin([], ["train.steps = 12"])
    assert TrainConfig().steps == 12
    with pytest.raises(UserInputError, match="train.steps: expected a positive integer, received 0"):
        TrainConfig(steps=0)
