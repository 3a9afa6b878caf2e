"""File writes that readers never see half done (local paths and gs:// alike, through tf.io.gfile)."""

import json
import os
from typing import Any

import tensorflow as tf


def write_atomically(path: str, content: str | bytes) -> None:
    """Writes `content` to `path` through a temporary file and a rename, so readers never see half a file."""
    temporary = _temporary(path)
    with tf.io.gfile.GFile(temporary, "wb" if isinstance(content, bytes) else "w") as f:
        f.write(content)
    tf.io.gfile.rename(temporary, path, overwrite=True)


def copy_atomically(source: str, path: str) -> None:
    """Copies `source` to `path` through a temporary file and a rename, so readers never see half a file."""
    temporary = _temporary(path)
    tf.io.gfile.copy(source, temporary, overwrite=True)
    tf.io.gfile.rename(temporary, path, overwrite=True)


def _temporary(path: str) -> str:
    # Beside `path` (a rename across file systems is not atomic), and per process (writers may race).
    return f"{path}.tmp-{os.getpid()}"


def write_json_atomically(path: str, record: Any, indent: int = 2) -> None:
    """Writes `record` as JSON (NaN and numpy scalars as JSON allows) to `path`, atomically."""
    write_atomically(path, json.dumps(record, indent=indent, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    # numpy scalars and arrays, tuples of them, paths: what reports carry.
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
