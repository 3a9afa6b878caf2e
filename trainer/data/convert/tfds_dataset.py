r"""Any TensorFlow Datasets (tfds) dataset with an image feature and a segmentation mask feature.

For example `oxford_iiit_pet` (`image`, `segmentation_mask` of 1 pet, 2 background, 3 outline):
  python -m trainer.data.convert tfds --tfds_name=oxford_iiit_pet --class_names=background,pet \
      --label_map=1:1,2:0,3:255 --output_dir=/data/pets
tfds decodes the images; they are stored PNG-encoded, so the pixels are exactly those tfds returns.
"""

from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from trainer.common.errors import UserInputError
from trainer.data.convert import reading
from trainer.data.convert.source import DatasetSource, SourceExample, SplitSource

# A feature naming each example (oxford_iiit_pet has one); else examples are named split/index.
_KEY_FEATURES = ("file_name", "image/filename", "filename")


def _examples(dataset, name: str, split: str, image_feature: str, mask_feature: str, table) -> Iterator:
    for index, example in enumerate(tfds.as_numpy(dataset)):
        key = f"{name}/{split}/{index}"
        for feature in _KEY_FEATURES:
            if feature in example:
                value = example[feature]
                key = value.decode("utf-8") if isinstance(value, bytes) else str(value)
                break
        image, mask = example[image_feature], np.asarray(example[mask_feature])
        # Bound now (not in a closure over the loop variables): the writer reads examples on other threads.
        yield SourceExample(
            key=key,
            location=f"tfds {name} split {split!r} example {index} ({key})",
            read=lambda image=image, mask=mask: (image, _mapped(mask, table)),
        )


def _mapped(mask: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Applies the label map to an integer mask of values in [0, 255]; anything else is left for validation."""
    if np.issubdtype(mask.dtype, np.integer) and mask.size and 0 <= mask.min() and mask.max() <= 255:
        return table[mask.astype(np.uint8)]
    return mask


def _check_features(builder, name: str, image_feature: str, mask_feature: str) -> None:
    features = builder.info.features
    for flag, feature in (("--image_feature", image_feature), ("--mask_feature", mask_feature)):
        if feature not in features:
            raise UserInputError(
                f"{flag}: expected a feature of tfds dataset {name!r} (it has {sorted(features.keys())}), "
                f"received {feature!r}"
            )


def _split_sources(
    builder, name: str, splits: tuple[str, ...], image_feature: str, mask_feature: str, table: np.ndarray
) -> list[SplitSource]:
    known_splits = tuple(builder.info.splits.keys())
    sources = []
    for split in splits:
        count = builder.info.splits[split].num_examples if split in known_splits else 0
        dataset = builder.as_dataset(split=split, shuffle_files=False)
        examples = _examples(dataset, name, split, image_feature, mask_feature, table)
        sources.append(SplitSource(split, examples, count or None))
    return sources


def tfds_source(
    name: str,
    class_names: tuple[str, ...],
    data_dir: str | None = None,
    image_feature: str = "image",
    mask_feature: str = "segmentation_mask",
    splits: tuple[str, ...] = (),
    label_map: dict[int, int] | None = None,
    ignore_label: int = 255,
    palette: tuple[tuple[int, int, int], ...] | None = None,
    train_split: str = "train",
    eval_split: str | None = None,
    download: bool = True,
) -> DatasetSource:
    """Describes a tfds dataset's splits, reading it through its builder.

    Args:
      name: the tfds name, optionally with config and version (`oxford_iiit_pet:4.*.*`).
      class_names: one per class id (tfds masks carry no class names).
      data_dir: tfds' data directory; None uses tfds' default.
      image_feature: the feature holding the uint8 RGB image.
      mask_feature: the feature holding the uint8 label map ([H, W] or [H, W, 1]).
      splits: the splits to convert; empty takes every split the builder knows.
      label_map: mask value -> class id, applied first; other values are kept.
      ignore_label: the label of pixels to skip.
      train_split: the JSON's training split.
      eval_split: the JSON's evaluation split; defaults to `validation` if converted, else `test`.
      download: download and prepare the dataset when it is not in `data_dir` yet.

    Raises:
      UserInputError: if a feature or split is missing.
    """
    if not class_names:
        raise UserInputError("--class_names: expected the names of the classes (tfds masks carry none), received none")
    builder = tfds.builder(name, data_dir=data_dir)
    if download:
        builder.download_and_prepare()
    _check_features(builder, name, image_feature, mask_feature)
    splits = tuple(splits) or tuple(builder.info.splits.keys())
    if not splits:
        raise UserInputError(f"--splits: tfds dataset {name!r} lists no splits; name the ones to convert")
    if eval_split is None:
        eval_split = "validation" if "validation" in splits else "test"
    table = reading.lookup_table(label_map or {})
    return DatasetSource(
        name=name.split(":")[0],
        class_names=class_names,
        ignore_label=ignore_label,
        splits=_split_sources(builder, name, splits, image_feature, mask_feature, table),
        train_split=train_split,
        eval_split=eval_split,
        palette=palette,
    )
