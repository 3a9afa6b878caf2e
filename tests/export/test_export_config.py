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
        (
            {"formats": ("saved_model", "torchscript")},
            r"gin binding export.formats: expected one of \{saved_model, tflite, onnx, tfjs\}, received 'torchscript'",
        ),
    ],
)
def test_bad_settings_name_the_binding(kwargs, message):
    with pytest.raises(UserInputError, match=message):
        exporter.ExportConfig(**kwargs)


def test_sizes_become_tuples():
    assert exporter.ExportConfig(tflite_input_size=[48, 64]).tflite_input_size == (48, 64)


def test_formats_start_with_the_saved_model_and_tflite_follows_its_conversions():
    assert exporter.ExportConfig().formats == ("saved_model",)
    assert exporter.ExportConfig(formats="onnx").formats == ("saved_model", "onnx")
    everything = exporter.ExportConfig(formats=("tfjs", "tflite", "onnx", "saved_model"))
    assert everything.formats == ("saved_model", "tfjs", "tflite", "onnx")
    # 'tflite' alone means every conversion; naming conversions implies 'tflite' (the binding as it was before).
    assert [q.value for q in everything.tflite_quantizations] == ["float32", "float16", "dynamic_range_int8", "int8"]
    implied = exporter.ExportConfig(tflite_quantizations=("int8",))
    assert implied.formats == ("saved_model", "tflite") and [q.value for q in implied.tflite_quantizations] == ["int8"]
