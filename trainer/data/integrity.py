"""Turning input-data failures deep inside `tf.data` into errors that name the file and record to fix."""

import dataclasses
import re
from collections.abc import Iterable

import tensorflow as tf

from trainer.common.errors import UserInputError

_CORRUPT_AT = re.compile(r"corrupted record at (\d+)")
# The in-graph record checks (schema.check_record) fail with "assertion failed: [Record <filename>: ...]".
_RECORD_CHECK = re.compile(r"assertion failed: \[(Record .*?)\](?: \[Op:|\s*$|\n)", re.DOTALL)


@dataclasses.dataclass(frozen=True)
class CorruptRecord:
    """Where a TFRecord file stops being readable."""

    file: str
    record_index: int
    byte_offset: int | None
    readable_records: int

    def describe(self) -> str:
        offset = f" (byte offset {self.byte_offset})" if self.byte_offset is not None else ""
        return f"{self.file}: record #{self.record_index}{offset} is corrupt"


def find_corrupt_records(files: Iterable[str]) -> list[CorruptRecord]:
    """Reads every record of `files` once and returns the first unreadable record of each damaged file.

    Records after a corrupt one cannot be located reliably (its length field may be damaged), so a reader that
    skips errors stops at it: `readable_records` is what survives of that file.
    """
    corrupt = []
    for path in files:
        count = 0
        try:
            for _ in tf.data.TFRecordDataset(path):
                count += 1
        except tf.errors.DataLossError as error:
            match = _CORRUPT_AT.search(str(error))
            corrupt.append(CorruptRecord(path, count, int(match.group(1)) if match else None, count))
    return corrupt


def explain_input_error(error: tf.errors.OpError, files: Iterable[str], split: str) -> UserInputError | None:
    """Returns a UserInputError naming the bad file/record behind `error`, or None if it is not an input error.

    Args:
      error: what the train or eval loop raised.
      files: the TFRecord files of the split being read.
      split: "train" or "eval", for the message.
    """
    if isinstance(error, tf.errors.DataLossError):
        corrupt = find_corrupt_records(files)
        where = "\n  ".join(record.describe() for record in corrupt) or "(no file is corrupt when read again)"
        return UserInputError(
            f"A {split} TFRecord file is corrupt ({str(error).strip().splitlines()[0]}):\n  {where}\n"
            "Re-create the file (e.g. rerun `python -m trainer.data.convert` for that split), or set the gin "
            "binding input_pipeline.skip_corrupt_records = True to train on the records before the damage."
        )
    if isinstance(error, tf.errors.InvalidArgumentError):
        match = _RECORD_CHECK.search(str(error))
        if match:
            return UserInputError(
                f"Bad {split} example: {match.group(1).strip()}. Fix or drop that example in the dataset (the "
                "converters validate every example: python -m trainer.data.convert), or check the dataset's "
                "num_classes and ignore_label."
            )
    return None
