"""Runs the example TFX pipeline (ImportExampleGen → Trainer → Pusher) with LocalDagRunner; needs the [tfx] extra.

  python scripts/tfx_pipeline.py --data_root=/tmp/data/v3_s48_n32_e8_k2_seed0 --pipeline_root=runs/tfx \
      --gin_file=configs/smoke.gin --train_steps=6

The pushed SavedModel lands in `--serving_model_dir` (default `<pipeline_root>/serving`) as a numbered version
directory that TF Serving loads.
"""

import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from trainer.pipeline import tfx_pipeline  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("data_root", None, "Directory of train-*.tfrecord and eval-*.tfrecord files.")
flags.DEFINE_string("pipeline_root", None, "Where TFX writes the components' outputs and its ML Metadata.")
flags.DEFINE_string("serving_model_dir", None, "Where the Pusher copies the model; default <pipeline_root>/serving.")
flags.DEFINE_multi_string("gin_file", [], "The trainer's gin files.")
flags.DEFINE_multi_string("gin_bindings", [], "Further gin bindings.")
flags.DEFINE_integer("train_steps", None, "train.steps; default: the gin files'.")
flags.DEFINE_string("pipeline_name", "deeplab", "The pipeline's name in ML Metadata.")


def main(argv: list[str]) -> None:
    del argv
    pipeline = tfx_pipeline.create_pipeline(
        FLAGS.pipeline_name,
        os.path.abspath(FLAGS.pipeline_root),
        os.path.abspath(FLAGS.data_root),
        os.path.abspath(FLAGS.serving_model_dir or os.path.join(FLAGS.pipeline_root, "serving")),
        gin_files=[os.path.abspath(path) for path in FLAGS.gin_file],
        gin_bindings=FLAGS.gin_bindings,
        train_steps=FLAGS.train_steps,
    )
    tfx_pipeline.run_locally(pipeline)


if __name__ == "__main__":
    flags.mark_flags_as_required(["data_root", "pipeline_root"])
    app.run(main)
