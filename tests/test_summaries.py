"""The `observe.*` config and the TensorBoard writers: only the chief writes, and only the streams a job uses."""

import os

import gin
import pytest

from tests.helpers import scalar_events, text_tags
from trainer.cluster.tasks import TaskInfo
from trainer.common.errors import UserInputError
from trainer.observe import summaries
from trainer.observe.config import ObserveConfig


def test_observe_config_is_bound_in_gin_and_checked():
    gin.clear_config()
    try:
        gin.parse_config("observe.peak_flops_per_sec = 2e12\nobserve.peak_matmul_size = 1024")
        config = ObserveConfig()
        assert config.peak_flops_per_sec == 2e12 and config.peak_matmul_size == 1024
    finally:
        gin.clear_config()
    assert ObserveConfig().peak_matmul_size == 4096  # the size `make bench` measures with
    with pytest.raises(UserInputError, match="observe.peak_flops_per_sec"):
        ObserveConfig(peak_flops_per_sec=0)
    with pytest.raises(UserInputError, match="observe.peak_matmul_size"):
        ObserveConfig(peak_matmul_size=0)
    with pytest.raises(UserInputError, match="observe.num_eval_images"):
        ObserveConfig(num_eval_images=-1)
    with pytest.raises(UserInputError, match="observe.eval_image_max_size"):
        ObserveConfig(eval_image_max_size=0)


def test_chief_writes_scalars_and_text_to_the_streams_it_uses(tmp_path):
    writers = summaries.SummaryWriters(str(tmp_path), TaskInfo("chief", 0, True), streams=[summaries.TRAIN_SUBDIR])
    summaries.write_scalars(writers.train, {"loss": 0.5}, step=3)
    summaries.write_text(writers.train, "note", summaries.markdown_code("a\nb"), step=3)
    summaries.write_scalars(writers.eval, {"miou": 0.1}, step=3)
    writers.close()
    assert scalar_events(writers.train_dir) == {"loss": [(3, 0.5)]}
    assert text_tags(writers.train_dir) == ["note"]
    assert not os.path.exists(tmp_path / summaries.EVAL_SUBDIR)  # an unused stream gets no event file


def test_non_chief_tasks_write_nothing(tmp_path):
    writers = summaries.SummaryWriters(str(tmp_path), TaskInfo("worker", 1, False))
    summaries.write_scalars(writers.train, {"loss": 0.5}, step=1)
    writers.close()
    assert os.listdir(tmp_path) == []


def test_markdown_code_indents_every_line():
    assert summaries.markdown_code("x = 1\ny = 2") == "    x = 1\n    y = 2"
