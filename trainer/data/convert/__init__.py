"""Converters from public segmentation datasets to the trainer's sharded TFRecords and dataset JSON.

Run `python -m trainer.data.convert <format> --source_dir=... --output_dir=...` with a format among
`voc`, `cityscapes`, `ade20k`, `folder` and `tfds`; `trainer.data.convert.cli` lists the flags. Each format
is one module that describes its source (`source.DatasetSource`); `writer.write_dataset` validates and writes.
"""
