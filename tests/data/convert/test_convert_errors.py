"""Bad examples stop a conversion naming the file, or are skipped and counted; outputs appear whole or not."""

import os
import subprocess
import sys

import numpy as np
import pytest
from absl import flags, logging

from tests.helpers import REPO_ROOT
from trainer.common import images
from trainer.common.errors import UserInputError
from trainer.data import info as info_lib
from trainer.data.convert import cli, voc, writer


def _voc_paths(tree, image_id: str) -> tuple[str, str]:
    root = os.path.join(tree.root, "VOCdevkit", "VOC2012")
    return os.path.join(root, "JPEGImages", f"{image_id}.jpg"), os.path.join(
        root, "SegmentationClass", f"{image_id}.png"
    )


@pytest.mark.parametrize(
    "damage, message",
    [
        ("truncated_jpeg", r"2007_000039\.jpg .*: the image does not decode"),
        (
            "mask_size",
            r"2007_000039\.jpg .*expected the label map to have the image's height and width 32x48, received 8x8",
        ),
        ("label_value", r"2007_000039\.jpg .*expected label values in \[0, 21\) or the ignore label 255, received 30"),
        ("rgb_mask", r"2007_000039\.png\).*expected a label PNG of class ids .* mode 'RGB'"),
        ("missing_mask", r"2007_000039\.png\).*NotFoundError"),
    ],
)
def test_bad_example_stops_conversion_naming_the_file(fake_voc, fake_files, tmp_path, damage, message):
    image_path, mask_path = _voc_paths(fake_voc, "2007_000039")  # a 32x48 train image
    if damage == "truncated_jpeg":
        with open(image_path, "rb") as f:
            data = f.read()
        with open(image_path, "wb") as f:
            f.write(data[: len(data) // 3])
    elif damage == "mask_size":
        fake_files.save_label_png(mask_path, np.zeros((8, 8), np.uint8), voc_palette())
    elif damage == "label_value":
        fake_files.save_label_png(mask_path, np.full((32, 48), 30, np.uint8), voc_palette())
    elif damage == "rgb_mask":
        fake_files.save_image(mask_path, np.zeros((32, 48, 3), np.uint8))
    else:
        os.remove(mask_path)
    output = tmp_path / "out"
    with pytest.raises(
        UserInputError, match=r"Converting split 'train': bad example .*" + message + r".*--skip_bad_examples"
    ):
        writer.write_dataset(voc.voc_source(fake_voc.root), str(output))
    # Nothing is left behind: no output directory and no staging directory.
    assert sorted(os.listdir(tmp_path)) == ["VOCdevkit"]

    info, reports = writer.write_dataset(voc.voc_source(fake_voc.root), str(output), skip_bad_examples=True)
    by_name = {report.name: report for report in reports}
    assert by_name["train"].num_written == 2 and [key for key, _ in by_name["train"].skipped] == ["2007_000039.jpg"]
    assert by_name["trainval"].num_written == 4 and len(by_name["trainval"].skipped) == 1
    assert info.num_train_examples == 2 and info.split("train").num_skipped == 1
    assert info_lib.load(str(output / info_lib.INFO_FILENAME)).split("trainval").num_skipped == 1


def voc_palette():
    return images.voc_palette(256).tolist()


def test_a_split_with_only_bad_examples_is_an_error(fake_voc, tmp_path):
    for image_id in ("2007_000033", "2009_000001"):
        os.remove(_voc_paths(fake_voc, image_id)[1])
    with pytest.raises(UserInputError, match=r"split 'val': expected at least one example, received none \(2 skipped"):
        writer.write_dataset(voc.voc_source(fake_voc.root), str(tmp_path / "out"), skip_bad_examples=True)


def test_existing_output_needs_overwrite_and_survives_a_failed_conversion(fake_voc, tmp_path):
    output = tmp_path / "out"
    first, _ = writer.write_dataset(voc.voc_source(fake_voc.root), str(output), num_shards=1)
    with pytest.raises(UserInputError, match=r"--output_dir: expected a new or empty directory.*--overwrite"):
        writer.write_dataset(voc.voc_source(fake_voc.root), str(output))
    # A conversion that fails half-way leaves the previous dataset exactly as it was.
    os.remove(_voc_paths(fake_voc, "2009_000001")[1])
    before = sorted(os.listdir(output))
    with pytest.raises(UserInputError, match="2009_000001"):
        writer.write_dataset(voc.voc_source(fake_voc.root), str(output), num_shards=3, overwrite=True)
    assert sorted(os.listdir(output)) == before and info_lib.load(str(output / info_lib.INFO_FILENAME)) == first
    assert sorted(os.listdir(tmp_path)) == ["VOCdevkit", "out"]
    # With --overwrite and good data, the new dataset replaces the old one.
    new, _ = writer.write_dataset(
        voc.voc_source(fake_voc.root), str(output), num_shards=3, overwrite=True, skip_bad_examples=True
    )
    assert len(new.train_files) == 3 and sorted(os.listdir(output)) != before
    assert sorted(os.listdir(tmp_path)) == ["VOCdevkit", "out"]


def test_more_shards_than_examples_leaves_no_empty_shard(fake_voc, tmp_path):
    info, _ = writer.write_dataset(voc.voc_source(fake_voc.root), str(tmp_path / "out"), num_shards=4)
    assert [os.path.basename(f) for f in info.split("val").files] == [
        "val-00000-of-00002.tfrecord",
        "val-00001-of-00002.tfrecord",
    ]
    assert len(info.train_files) == 3


@pytest.fixture
def parsed_flags():
    """Parses command-line flags for `cli.convert`, and restores the defaults afterwards."""
    # Unparsing resets absl's logger to WARNING, which would hide INFO logs from later tests' caplog.
    level = logging.get_absl_logger().level

    def parse(*args: str) -> None:
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["convert", *args])

    yield parse
    flags.FLAGS.unparse_flags()
    logging.get_absl_logger().setLevel(level)


def test_cli_converts_and_rejects_other_formats_flags(fake_voc, tmp_path, parsed_flags):
    parsed_flags(f"--source_dir={fake_voc.root}", f"--output_dir={tmp_path / 'out'}", "--num_workers=2")
    info, _ = cli.convert("voc")
    assert info.num_train_examples == 3
    parsed_flags(f"--source_dir={fake_voc.root}", f"--output_dir={tmp_path / 'x'}", "--class_names=a,b")
    with pytest.raises(
        UserInputError, match=r"--class_names: not read by format 'voc', which takes --sbd_dir, --source_dir"
    ):
        cli.convert("voc")
    with pytest.raises(
        UserInputError, match=r"format: expected one of \{ade20k, cityscapes, folder, tfds, voc\}, received"
    ):
        cli.convert("coco")
    parsed_flags(f"--output_dir={tmp_path / 'y'}")
    with pytest.raises(UserInputError, match=r"--source_dir: required by format 'ade20k'"):
        cli.convert("ade20k")


@pytest.mark.subprocess
def test_command_line_entry_point(fake_voc, tmp_path):
    output = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "trainer.data.convert",
        "voc",
        f"--source_dir={fake_voc.root}",
        f"--output_dir={output}",
    ]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "train: 3 examples, 0 skipped" in result.stdout
    assert info_lib.load(str(output / info_lib.INFO_FILENAME)).num_eval_examples == 2
