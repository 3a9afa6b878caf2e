"""The Model Garden half of `make bench-compare`; runs inside the virtual environment that holds tf-models-official.

  <venv>/bin/python devtools/bench/model_garden_side.py records --out_dir=D --crop=128 --num_examples=64
  <venv>/bin/python devtools/bench/model_garden_side.py train --records=D/train-*.tfrecord --crop=128 \
      --steps=30 --steps_per_loop=5 --model_dir=M
  <venv>/bin/python devtools/bench/model_garden_side.py graph --crop=128 --out=F.pb

`records` writes one set of segmentation TFRecords with Model Garden's own `TfExampleBuilder` (JPEG images,
PNG masks; the keys both trainers read). `train` runs Model Garden's trainer (`official.core.train_lib.
run_experiment`) on experiment `seg_deeplabv3plus_pascal` scaled to the benchmark's model: ResNet-50 at output
stride 16, ReLU, batch 8, no pretrained weights, one device; its steps/sec are in `model_dir/train`'s summaries.
`graph` writes the model's forward graph for one crop×crop image, for the FLOP counter on the other side.

This file imports only TensorFlow, NumPy and Model Garden: the other side's TensorFlow may differ.
"""

import argparse
import os
import sys

import numpy as np
import scenes  # run as a script, its own folder is on sys.path; scenes.py is NumPy only
import tensorflow as tf
import tf_keras
from official.core import exp_factory, task_factory, train_lib
from official.vision import registry_imports  # noqa: F401  (registers the vision experiments)
from official.vision.data import tf_example_builder
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

EXPERIMENT = "seg_deeplabv3plus_pascal"
NUM_CLASSES = scenes.NUM_CLASSES
GLOBAL_BATCH_SIZE = 8


def write_records(out_dir: str, crop: int, num_examples: int, seed: int) -> str:
    """Writes `num_examples` scenes of `scenes.example_size(crop)` to out_dir/train-00000-of-00001.tfrecord."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "train-00000-of-00001.tfrecord")
    rng = np.random.default_rng(seed)
    height, width = scenes.example_size(crop)
    with tf.io.TFRecordWriter(path) as writer:
        for index in range(num_examples):
            image, mask = scenes.scene(rng, height, width)
            builder = tf_example_builder.TfExampleBuilder()
            builder.add_image_matrix_feature(image, image_format="JPEG", image_source_id=str(index).encode())
            builder.add_semantic_mask_matrix_feature(mask)
            writer.write(builder.serialized_example)
    return path


def experiment(records: str, crop: int, steps: int, steps_per_loop: int):
    """The Model Garden experiment config scaled to the benchmark's model and run length."""
    params = exp_factory.get_exp_config(EXPERIMENT)
    params.override(
        {
            "runtime": {"distribution_strategy": "one_device", "num_gpus": 0, "mixed_precision_dtype": "float32"},
            "task": {
                "init_checkpoint": None,
                "init_checkpoint_modules": None,
                "model": {
                    "num_classes": NUM_CLASSES,
                    "backbone": {"dilated_resnet": {"model_id": 50}},
                    "norm_activation": {"activation": "relu", "use_sync_bn": False},
                },
                "train_data": {
                    "input_path": records,
                    "output_size": [crop, crop],
                    "global_batch_size": GLOBAL_BATCH_SIZE,
                    "shuffle_buffer_size": 64,
                },
                "validation_data": {"input_path": records, "output_size": [crop, crop]},
            },
            "trainer": {
                "train_steps": steps,
                "steps_per_loop": steps_per_loop,
                "summary_interval": steps_per_loop,
                "checkpoint_interval": steps,
                "validation_interval": steps,
                "optimizer_config": {
                    "learning_rate": {"polynomial": {"decay_steps": steps}},
                    "warmup": {"linear": {"warmup_steps": 1}},
                },
            },
        },
        is_strict=True,
    )
    params.validate()
    params.lock()
    return params


def train(records: str, crop: int, steps: int, steps_per_loop: int, model_dir: str) -> None:
    """Trains with Model Garden's own trainer on one device (the CPU here)."""
    params = experiment(records, crop, steps, steps_per_loop)
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0" if not tf.config.list_physical_devices("GPU") else "/gpu:0")
    with strategy.scope():
        task = task_factory.get_task(params.task, logging_dir=model_dir)
    train_lib.run_experiment(
        distribution_strategy=strategy, task=task, mode="train", params=params, model_dir=model_dir
    )


def write_forward_graph(crop: int, out: str) -> int:
    """Writes the forward graph of Model Garden's model for one crop×crop image; returns its parameter count."""
    params = experiment("unused", crop, steps=1, steps_per_loop=1)
    model = task_factory.get_task(params.task).build_model()
    forward = tf.function(lambda images: model(images, training=False))
    concrete = forward.get_concrete_function(tf.TensorSpec([1, crop, crop, 3], tf.float32))
    # Frozen, so every kernel is a constant whose shape survives the import on the other side.
    graph_def = convert_variables_to_constants_v2(concrete).graph.as_graph_def()
    tf.io.write_graph(graph_def, os.path.dirname(out) or ".", os.path.basename(out), as_text=False)
    return int(sum(np.prod(v.shape) for v in model.weights))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="model_garden_side.py")
    parser.add_argument("command", choices=("records", "train", "graph"))
    parser.add_argument("--crop", type=int, required=True)
    parser.add_argument("--out_dir")
    parser.add_argument("--num_examples", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--records")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--steps_per_loop", type=int, default=5)
    parser.add_argument("--model_dir")
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    tf_keras.utils.set_random_seed(args.seed)
    if args.command == "records":
        print(write_records(args.out_dir, args.crop, args.num_examples, args.seed))
    elif args.command == "train":
        train(args.records, args.crop, args.steps, args.steps_per_loop, args.model_dir)
    else:
        print(write_forward_graph(args.crop, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
