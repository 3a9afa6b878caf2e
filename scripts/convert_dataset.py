#!/usr/bin/env python
"""Converts a segmentation dataset to the trainer's TFRecords: `scripts/convert_dataset.py <format> --help`.

The same as `python -m trainer.data.convert`; see `trainer/data/convert/cli.py` for the formats and flags.
"""

from absl import flags

from trainer.data.convert import cli

flags.adopt_module_key_flags(cli)

if __name__ == "__main__":
    cli.run()
