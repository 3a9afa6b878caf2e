"""An example TFX pipeline: ImportExampleGen over TFRecords of `trainer.data.schema` examples → Trainer (this
trainer, through `tfx_trainer.run_fn`) → Pusher, for TFX's LocalDagRunner (the `[tfx]` extra).

    python scripts/tfx_pipeline.py --data_root=data/synthetic_shapes/<version> --pipeline_root=runs/tfx \\
        --gin_file=configs/smoke.gin

`data_root` holds the TFRecords as `trainer.data.convert` (or the synthetic dataset) writes them:
`train-*.tfrecord` and `eval-*.tfrecord`.
"""

import os
from collections.abc import Sequence

from trainer.pipeline import tfx_trainer

RUN_FN = f"{tfx_trainer.__name__}.run_fn"
TRAIN_SPLIT = "train"
EVAL_SPLIT = "eval"


def create_pipeline(
    pipeline_name: str,
    pipeline_root: str,
    data_root: str,
    serving_model_dir: str,
    gin_files: Sequence[str] = (),
    gin_bindings: Sequence[str] = (),
    train_steps: int | None = None,
    train_pattern: str = "train-*.tfrecord",
    eval_pattern: str = "eval-*.tfrecord",
):
    """The TFX pipeline (a `tfx.dsl.Pipeline`) with its ML Metadata in `pipeline_root/metadata.sqlite`.

    Args:
      pipeline_name: its name in ML Metadata.
      pipeline_root: where TFX writes every component's outputs.
      data_root: the directory of the TFRecords.
      serving_model_dir: where the Pusher copies the trained SavedModel (a numbered version directory).
      gin_files: the trainer's gin files (absolute paths, or relative to where the pipeline runs).
      gin_bindings: further gin bindings.
      train_steps: `train.steps`; None leaves it to the gin files.
      train_pattern: the training files under `data_root` (a glob pattern).
      eval_pattern: the evaluation files under `data_root`.
    """
    from tfx.components.example_gen.import_example_gen.component import ImportExampleGen
    from tfx.components.pusher.component import Pusher
    from tfx.components.trainer.component import Trainer
    from tfx.orchestration import metadata, pipeline
    from tfx.proto import example_gen_pb2, pusher_pb2, trainer_pb2

    splits = [
        example_gen_pb2.Input.Split(name=TRAIN_SPLIT, pattern=train_pattern),
        example_gen_pb2.Input.Split(name=EVAL_SPLIT, pattern=eval_pattern),
    ]
    example_gen = ImportExampleGen(input_base=data_root, input_config=example_gen_pb2.Input(splits=splits))
    trainer = Trainer(
        run_fn=RUN_FN,
        examples=example_gen.outputs["examples"],
        train_args=trainer_pb2.TrainArgs(splits=[TRAIN_SPLIT], num_steps=train_steps),
        eval_args=trainer_pb2.EvalArgs(splits=[EVAL_SPLIT]),
        custom_config={tfx_trainer.GIN_FILES: list(gin_files), tfx_trainer.GIN_BINDINGS: list(gin_bindings)},
    )
    destination = pusher_pb2.PushDestination(
        filesystem=pusher_pb2.PushDestination.Filesystem(base_directory=serving_model_dir)
    )
    pusher = Pusher(model=trainer.outputs["model"], push_destination=destination)
    return pipeline.Pipeline(
        pipeline_name=pipeline_name,
        pipeline_root=pipeline_root,
        components=[example_gen, trainer, pusher],
        metadata_connection_config=metadata.sqlite_metadata_connection_config(
            os.path.join(pipeline_root, "metadata.sqlite")
        ),
    )


def run_locally(pipeline) -> None:
    """Runs `pipeline` in this process with TFX's LocalDagRunner."""
    from tfx.orchestration.local.local_dag_runner import LocalDagRunner

    LocalDagRunner().run(pipeline)
