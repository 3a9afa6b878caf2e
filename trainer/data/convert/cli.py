r"""`python -m trainer.data.convert <format> --source_dir=... --output_dir=...`: flags and dispatch.

Formats: voc, cityscapes, ade20k, folder, tfds. Examples:
  python -m trainer.data.convert voc --source_dir=/data/VOCdevkit --sbd_dir=/data/benchmark_RELEASE/dataset \
      --output_dir=/data/voc_tfrecords
  python -m trainer.data.convert cityscapes --source_dir=/data/cityscapes --output_dir=/data/cityscapes_tfrecords
  python -m trainer.data.convert ade20k --source_dir=/data/ADEChallengeData2016 --output_dir=/data/ade_tfrecords
  python -m trainer.data.convert folder --source_dir=/data/mine --class_names=background,road \
      --output_dir=/data/mine_tfrecords
  python -m trainer.data.convert folder --source_dir=/data/cracks --binary --output_dir=/data/cracks_tfrecords
  python -m trainer.data.convert tfds --tfds_name=oxford_iiit_pet --class_names=background,pet \
      --label_map=1:1,2:0,3:255 --output_dir=/data/pets_tfrecords
Then train with `--gin_bindings="run.dataset=@converted_dataset"
--gin_bindings="converted_dataset.data_dir='/data/voc_tfrecords'"`.
"""

import os
import sys
from collections.abc import Callable, Sequence

from absl import app, flags, logging

from trainer.common import validate
from trainer.common.errors import UserInputError
from trainer.data.convert import ade20k, cityscapes, folder, reading, tfds_dataset, voc, writer
from trainer.data.convert.source import DatasetSource

_SOURCE_DIR = flags.DEFINE_string("source_dir", None, "The source dataset's directory (local or gs://).")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where the TFRecords and dataset_info.json go.")
_NUM_SHARDS = flags.DEFINE_integer(
    "num_shards", 0, f"TFRecord files per split; 0: one per {writer.EXAMPLES_PER_SHARD} examples."
)
_SKIP_BAD_EXAMPLES = flags.DEFINE_boolean(
    "skip_bad_examples", False, "Leave out (and count) examples that fail validation instead of stopping."
)
_NUM_WORKERS = flags.DEFINE_integer("num_workers", os.cpu_count() or 1, "Threads reading and validating examples.")
_OVERWRITE = flags.DEFINE_boolean("overwrite", False, "Replace a non-empty --output_dir once the new data is complete.")
_TRAIN_SPLIT = flags.DEFINE_string("train_split", None, "The split dataset_info.json trains on (format default).")
_EVAL_SPLIT = flags.DEFINE_string("eval_split", None, "The split dataset_info.json evaluates on (format default).")
_SBD_DIR = flags.DEFINE_string("sbd_dir", None, "voc: SBD's dataset/ directory (cls/*.mat) or a folder of SBD PNGs.")
_SPLITS = flags.DEFINE_list("splits", None, "cityscapes, tfds: the splits to convert.")
_CLASS_NAMES = flags.DEFINE_list("class_names", None, "folder, tfds: the class names, in class-id order.")
_CLASS_NAMES_FILE = flags.DEFINE_string(
    "class_names_file", None, "folder, tfds: a file with one class per line, 'name' or 'name,r,g,b'."
)
_IGNORE_LABEL = flags.DEFINE_integer("ignore_label", 255, "folder, tfds: the mask value of pixels to skip.")
_LABEL_MAP = flags.DEFINE_string("label_map", "", "folder, tfds: mask value to class id, e.g. '1:1,2:0,3:255'.")
_BINARY = flags.DEFINE_boolean(
    "binary",
    False,
    "folder, tfds: 0/255 binary masks: 255 becomes class 1 (the same as --label_map=255:1); the classes default "
    "to background,foreground.",
)
_IMAGE_CHANNELS = flags.DEFINE_integer(
    "image_channels", 3, "folder: channels of every image (3 RGB; 1 grey, 4 e.g. RGB + near-infrared, ...)."
)
_IMAGE_DTYPE = flags.DEFINE_enum("image_dtype", "uint8", ["uint8", "uint16"], "folder: pixel type of every image.")
_VAL_FRACTION = flags.DEFINE_float("val_fraction", 0.1, "folder: the share of a flat images/ that becomes val.")
_NAME = flags.DEFINE_string("name", None, "folder: the dataset's name (default: the directory's).")
_TFDS_NAME = flags.DEFINE_string("tfds_name", None, "tfds: the dataset, e.g. oxford_iiit_pet.")
_TFDS_DATA_DIR = flags.DEFINE_string("tfds_data_dir", None, "tfds: its data directory (default: tfds' own).")
_IMAGE_FEATURE = flags.DEFINE_string("image_feature", "image", "tfds: the image feature.")
_MASK_FEATURE = flags.DEFINE_string("mask_feature", "segmentation_mask", "tfds: the segmentation mask feature.")
_DOWNLOAD = flags.DEFINE_boolean("download", True, "tfds: download and prepare the dataset if needed.")

# The flags each format reads, besides the common ones; giving another format's flag is an error.
_FORMAT_FLAGS = {
    "voc": {"source_dir", "sbd_dir"},
    "cityscapes": {"source_dir", "splits"},
    "ade20k": {"source_dir"},
    "folder": {
        "source_dir",
        "class_names",
        "class_names_file",
        "ignore_label",
        "label_map",
        "binary",
        "val_fraction",
        "name",
        "image_channels",
        "image_dtype",
    },
    "tfds": {
        "tfds_name",
        "tfds_data_dir",
        "image_feature",
        "mask_feature",
        "splits",
        "class_names",
        "class_names_file",
        "ignore_label",
        "label_map",
        "binary",
        "download",
    },
}
_SPECIFIC_FLAGS = set().union(*_FORMAT_FLAGS.values())


def _required(flag: flags.FlagHolder, format_name: str) -> str:
    if not flag.value:
        raise UserInputError(f"--{flag.name}: required by format {format_name!r}, received none")
    return flag.value


def _split_defaults(defaults: dict) -> dict:
    """The --train_split/--eval_split given on the command line, over the format's defaults."""
    if _TRAIN_SPLIT.value:
        defaults["train_split"] = _TRAIN_SPLIT.value
    if _EVAL_SPLIT.value:
        defaults["eval_split"] = _EVAL_SPLIT.value
    return defaults


def _classes() -> tuple[tuple[str, ...], tuple | None]:
    if _CLASS_NAMES.value and _CLASS_NAMES_FILE.value:
        raise UserInputError("--class_names and --class_names_file: expected one of them, received both")
    if _CLASS_NAMES_FILE.value:
        return folder.read_class_file(_CLASS_NAMES_FILE.value)
    if _BINARY.value and not _CLASS_NAMES.value:
        return ("background", "foreground"), None
    return tuple(_CLASS_NAMES.value or ()), None


def _label_map() -> dict[int, int]:
    mapping = reading.parse_label_map(_LABEL_MAP.value)
    if _BINARY.value:
        if mapping.get(255, 1) != 1:
            raise UserInputError(
                f"--binary and --label_map: --binary maps 255 to 1, --label_map maps it to {mapping[255]}; give one"
            )
        mapping[255] = 1
    return mapping


def _voc() -> DatasetSource:
    return voc.voc_source(
        _required(_SOURCE_DIR, "voc"), sbd_dir=_SBD_DIR.value, **_split_defaults({"eval_split": "val"})
    )


def _cityscapes() -> DatasetSource:
    splits = tuple(_SPLITS.value or ("train", "val"))
    return cityscapes.cityscapes_source(_required(_SOURCE_DIR, "cityscapes"), splits, **_split_defaults({}))


def _ade20k() -> DatasetSource:
    return ade20k.ade20k_source(_required(_SOURCE_DIR, "ade20k"), **_split_defaults({}))


def _folder() -> DatasetSource:
    class_names, palette = _classes()
    return folder.folder_source(
        _required(_SOURCE_DIR, "folder"),
        class_names,
        palette=palette,
        ignore_label=_IGNORE_LABEL.value,
        label_map=_label_map(),
        val_fraction=_VAL_FRACTION.value,
        name=_NAME.value,
        image_channels=_IMAGE_CHANNELS.value,
        image_dtype=_IMAGE_DTYPE.value,
        **_split_defaults({}),
    )


def _tfds() -> DatasetSource:
    class_names, palette = _classes()
    return tfds_dataset.tfds_source(
        _required(_TFDS_NAME, "tfds"),
        class_names,
        data_dir=_TFDS_DATA_DIR.value,
        image_feature=_IMAGE_FEATURE.value,
        mask_feature=_MASK_FEATURE.value,
        splits=tuple(_SPLITS.value or ()),
        label_map=_label_map(),
        ignore_label=_IGNORE_LABEL.value,
        palette=palette,
        download=_DOWNLOAD.value,
        **_split_defaults({}),
    )


FORMATS: dict[str, Callable[[], DatasetSource]] = {
    "voc": _voc,
    "cityscapes": _cityscapes,
    "ade20k": _ade20k,
    "folder": _folder,
    "tfds": _tfds,
}


def convert(format_name: str) -> tuple:
    """Converts the dataset the flags describe in `format_name`; returns `writer.write_dataset`'s result.

    Raises:
      UserInputError: for an unknown format, a flag of another format, or any problem `write_dataset` reports.
    """
    validate.choice("format", format_name, sorted(FORMATS))
    foreign = sorted(name for name in _SPECIFIC_FLAGS - _FORMAT_FLAGS[format_name] if flags.FLAGS[name].present)
    if foreign:
        raise UserInputError(
            f"{', '.join('--' + n for n in foreign)}: not read by format {format_name!r}, which takes "
            f"{', '.join('--' + n for n in sorted(_FORMAT_FLAGS[format_name]))} besides the common flags"
        )
    source = FORMATS[format_name]()
    return writer.write_dataset(
        source,
        _required(_OUTPUT_DIR, format_name),
        num_shards=_NUM_SHARDS.value,
        skip_bad_examples=_SKIP_BAD_EXAMPLES.value,
        num_workers=_NUM_WORKERS.value,
        overwrite=_OVERWRITE.value,
    )


def main(argv: Sequence[str]) -> None:
    if len(argv) != 2:
        raise app.UsageError(f"expected one format among {sorted(FORMATS)}, received {argv[1:]}")
    info, reports = convert(argv[1])
    lines = [f"Wrote {info.name} ({info.num_classes} classes) to {_OUTPUT_DIR.value}:"]
    for report in reports:
        lines.append(f"  {report.name}: {report.num_written} examples, {len(report.skipped)} skipped")
        lines.extend(f"    skipped {key}: {reason}" for key, reason in report.skipped)
    lines.append(f"  trains on {info.num_train_examples} examples, evaluates on {info.num_eval_examples}")
    logging.info("\n".join(lines))
    print("\n".join(lines))


def run() -> None:
    """The console entry point: parses the flags and runs `main`."""
    # absl prints the __main__ module's docstring as the usage: make it this module's, with the examples.
    sys.modules["__main__"].__doc__ = __doc__
    app.run(main)
