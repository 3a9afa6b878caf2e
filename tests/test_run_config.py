"""The config tree: every gin-bound settings object is built at the root (RunConfig.from_gin), never below it."""

import dataclasses
import traceback

import pytest

from tests.helpers import one_device_strategy, parse_smoke_config
from trainer import train_lib
from trainer.run_config import RunConfig

pytestmark = [pytest.mark.usefixtures("clear_gin"), pytest.mark.slow]

# A config may be re-made from itself (dataclasses.replace) below the root, e.g. to fill a default.
_DERIVED = ("replace",)


def _part_types():
    return {field.name: field.type for field in dataclasses.fields(RunConfig)}


def test_run_builds_each_gin_configured_settings_object_only_in_the_config_tree(tmp_path, monkeypatch):
    constructions = []
    for name, part_type in _part_types().items():
        original = part_type.__post_init__

        def recording(self, original=original, name=name):
            stack = [frame.name for frame in traceback.extract_stack()[:-1]]
            constructions.append((name, stack))
            original(self)

        monkeypatch.setattr(part_type, "__post_init__", recording)
    parse_smoke_config(str(tmp_path / "data"), "train.steps = 2", "train.steps_per_loop = 1")
    report = train_lib.run("train_and_eval", str(tmp_path / "run"), strategy=one_device_strategy())
    assert report["step"] == 2
    built = {name for name, _ in constructions}
    assert built == set(_part_types()), "every part of the tree is built during run()"
    below_root = [
        (name, stack[-4:])
        for name, stack in constructions
        if "from_gin" not in stack and not any(frame in _DERIVED for frame in stack)
    ]
    assert not below_root, f"built outside RunConfig.from_gin: {below_root}"
    from_root = [name for name, stack in constructions if "from_gin" in stack]
    assert sorted(from_root) == sorted(_part_types()), "each part is built exactly once at the root"


def test_from_gin_keeps_the_parts_it_is_given():
    train = RunConfig.from_gin().train
    given = dataclasses.replace(train, steps=7)
    assert RunConfig.from_gin(train=given).train is given
