"""`export.*` settings: checked once, in ExportConfig, and handed to the exporter by the caller (never made inside)."""

import inspect

import pytest

from trainer.common.errors import UserInputError
from trainer.serving import exporter


def test_the_exporter_takes_its_config_from_the_caller():
    # A config built inside the library would read gin behind the root's back.
    for function in (exporter.export_model, exporter.restore_checkpoint_to_export):
        assert inspect.signature(function).parameters["config"].default is inspect.Parameter.empty


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"checkpoint": "newest"},
            r"gin binding export.checkpoint: expected one of \{latest, best\}, received 'newest'",
        ),
        ({"size_multiple": 0}, r"gin binding export.size_multiple: expected a positive integer, received 0"),
        ({"tflite_input_size": (32,)}, r"gin binding export.tflite_input_size: expected \(height, width\)"),
        ({"tflite_input_size": (32, -1)}, r"gin binding export.tflite_input_size\[1\]: expected a positive integer"),
        ({"num_calibration_images": 0}, r"gin binding export.num_calibration_images: expected a positive integer"),
        ({"num_parity_images": True}, r"gin binding export.num_parity_images: expected a positive integer"),
    ],
)
def test_bad_settings_name_the_binding(kwargs, message):
    with pytest.raises(UserInputError, match=message):
        exporter.ExportConfig(**kwargs)


def test_sizes_become_tuples():
    assert exporter.ExportConfig(tflite_input_size=[48, 64]).tflite_input_size == (48, 64)
