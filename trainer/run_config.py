"""The config tree of a run: every gin-bound settings object, built once at the root and handed down.

Nothing below `run()` constructs a configurable without arguments: each part of this tree is made here (gin
fills in its bindings) and passed to the objects that use it.
"""

import dataclasses

from trainer.cluster.preemption import PreemptionConfig
from trainer.core.config import EvalConfig, TrainConfig
from trainer.core.inference import InferenceConfig
from trainer.core.initialization import InitConfig
from trainer.core.losses import SegmentationLoss
from trainer.core.optim import OptimizerConfig
from trainer.data.pipeline import InputPipeline
from trainer.models.batch_norm import BatchNormConfig
from trainer.observe.config import ObserveConfig
from trainer.serving.exporter import ExportConfig


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """The settings of one run, by gin name: `train`, `evaluation`, `optimizer`, `loss`, `batch_norm`, …"""

    train: TrainConfig
    evaluation: EvalConfig
    optimizer: OptimizerConfig
    loss: SegmentationLoss
    inference: InferenceConfig
    observe: ObserveConfig
    init: InitConfig
    export: ExportConfig
    input_pipeline: InputPipeline
    batch_norm: BatchNormConfig
    preemption: PreemptionConfig

    @classmethod
    def from_gin(cls, **given: object) -> "RunConfig":
        """Builds every part not `given` from its gin bindings (defaults where there are none)."""
        parts = {field.name: given.get(field.name) for field in dataclasses.fields(cls)}
        return cls(**{name: value if value is not None else _PART_TYPES[name]() for name, value in parts.items()})


_PART_TYPES = {
    "train": TrainConfig,
    "evaluation": EvalConfig,
    "optimizer": OptimizerConfig,
    "loss": SegmentationLoss,
    "inference": InferenceConfig,
    "observe": ObserveConfig,
    "init": InitConfig,
    "export": ExportConfig,
    "input_pipeline": InputPipeline,
    "batch_norm": BatchNormConfig,
    "preemption": PreemptionConfig,
}
