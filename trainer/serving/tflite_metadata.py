"""TFLite model metadata (the TFLite Support schema, `metadata_schema.fbs`) written without `tflite-support`.

The standard layout, as `tflite_support.metadata.MetadataPopulator` writes it: a `ModelMetadata` flatbuffer
(file identifier "M001") in a model buffer named "TFLITE_METADATA", and the associated files (here the label
file) in a zip archive appended to the model. Interpreters ignore both; the Task Library, Android Studio's
ML binding and `MetadataDisplayer` read them. `tflite-support` is not installable next to TensorFlow 2.21, so
the few tables needed are built here with `flatbuffers`, field by field in schema order.
"""

import dataclasses
import io
import zipfile

import flatbuffers
import numpy as np
from flatbuffers import number_types
from flatbuffers.table import Table
from tensorflow.lite.python import schema_py_generated as schema_fb
from tensorflow.lite.tools import flatbuffer_utils

METADATA_BUFFER_NAME = "TFLITE_METADATA"
METADATA_FILE_IDENTIFIER = b"M001"
# Only schema 1.0.0 fields are written, so any metadata parser reads them.
MIN_PARSER_VERSION = "1.0.0"
LABELS_FILE = "labels.txt"

# metadata_schema.fbs enums.
TENSOR_AXIS_LABELS = 2
TENSOR_VALUE_LABELS = 3
COLOR_SPACE_RGB = 1
COLOR_SPACE_GRAYSCALE = 2
_CONTENT_IMAGE_PROPERTIES = 2
_ASSOCIATED_FILE_TYPES = {TENSOR_AXIS_LABELS: "TENSOR_AXIS_LABELS", TENSOR_VALUE_LABELS: "TENSOR_VALUE_LABELS"}

# Field (slot) numbers of the tables used, in metadata_schema.fbs order.
_MODEL_FIELDS = ("name", "description", "version", "subgraph_metadata", "author", "license", "associated_files")
_MODEL_FIELDS += ("min_parser_version",)
_SUBGRAPH_FIELDS = ("name", "description", "input_tensor_metadata", "output_tensor_metadata", "associated_files")
_TENSOR_FIELDS = ("name", "description", "dimension_names", "content", "process_units", "stats", "associated_files")
_FILE_FIELDS = ("name", "description", "type", "locale")
_CONTENT_FIELDS = ("content_properties_type", "content_properties", "range")
_IMAGE_PROPERTIES_FIELDS = ("color_space", "default_size")
_RANGE_FIELDS = ("min", "max")
_STATS_FIELDS = ("max", "min")


@dataclasses.dataclass(frozen=True)
class TensorDescription:
    """What the metadata says about one input or output tensor."""

    name: str
    description: str
    color_space: int | None = None
    content_range: tuple[int, int] | None = None
    value_range: tuple[float, float] | None = None
    label_file_type: int | None = None


def _slot(fields: tuple[str, ...], field: str) -> int:
    return fields.index(field)


def _table(
    builder: flatbuffers.Builder,
    fields: tuple[str, ...],
    offsets: dict[str, int] | None = None,
    bytes_: dict[str, int] | None = None,
    ints: dict[str, int] | None = None,
) -> int:
    """Ends a table whose children (strings, vectors, tables) were already built; returns its offset."""
    builder.StartObject(len(fields))
    for field, value in (offsets or {}).items():
        builder.PrependUOffsetTRelativeSlot(_slot(fields, field), value, 0)
    for field, value in (ints or {}).items():
        builder.PrependInt32Slot(_slot(fields, field), value, 0)
    for field, value in (bytes_ or {}).items():
        builder.PrependInt8Slot(_slot(fields, field), value, 0)
    return builder.EndObject()


def _offset_vector(builder: flatbuffers.Builder, offsets: list[int]) -> int:
    builder.StartVector(4, len(offsets), 4)
    for offset in reversed(offsets):
        builder.PrependUOffsetTRelative(offset)
    return builder.EndVector()


def _float_vector(builder: flatbuffers.Builder, values: tuple[float, ...]) -> int:
    builder.StartVector(4, len(values), 4)
    for value in reversed(values):
        builder.PrependFloat32(value)
    return builder.EndVector()


def _labels_file(builder: flatbuffers.Builder, file_type: int) -> int:
    name = builder.CreateString(LABELS_FILE)
    description = builder.CreateString("Class names, one per line in class-id order.")
    return _table(builder, _FILE_FIELDS, {"name": name, "description": description}, bytes_={"type": file_type})


def _tensor(builder: flatbuffers.Builder, tensor: TensorDescription) -> int:
    offsets = {"name": builder.CreateString(tensor.name), "description": builder.CreateString(tensor.description)}
    if tensor.color_space is not None:
        properties = _table(builder, _IMAGE_PROPERTIES_FIELDS, bytes_={"color_space": tensor.color_space})
        content_offsets = {"content_properties": properties}
        if tensor.content_range is not None:
            low, high = tensor.content_range
            content_offsets["range"] = _table(builder, _RANGE_FIELDS, ints={"min": low, "max": high})
        offsets["content"] = _table(
            builder, _CONTENT_FIELDS, content_offsets, bytes_={"content_properties_type": _CONTENT_IMAGE_PROPERTIES}
        )
    if tensor.value_range is not None:
        low, high = tensor.value_range
        offsets["stats"] = _table(
            builder,
            _STATS_FIELDS,
            {"max": _float_vector(builder, (high,)), "min": _float_vector(builder, (low,))},
        )
    if tensor.label_file_type is not None:
        offsets["associated_files"] = _offset_vector(builder, [_labels_file(builder, tensor.label_file_type)])
    return _table(builder, _TENSOR_FIELDS, offsets)


def build_metadata(
    name: str,
    description: str,
    version: str,
    inputs: list[TensorDescription],
    outputs: list[TensorDescription],
) -> bytes:
    """Returns a `ModelMetadata` flatbuffer; `inputs` and `outputs` in the order of the subgraph's tensors."""
    builder = flatbuffers.Builder(1024)
    input_tensors = _offset_vector(builder, [_tensor(builder, tensor) for tensor in inputs])
    output_tensors = _offset_vector(builder, [_tensor(builder, tensor) for tensor in outputs])
    subgraph = _table(
        builder,
        _SUBGRAPH_FIELDS,
        {
            "name": builder.CreateString(name),
            "input_tensor_metadata": input_tensors,
            "output_tensor_metadata": output_tensors,
        },
    )
    model = _table(
        builder,
        _MODEL_FIELDS,
        {
            "name": builder.CreateString(name),
            "description": builder.CreateString(description),
            "version": builder.CreateString(version),
            "subgraph_metadata": _offset_vector(builder, [subgraph]),
            "min_parser_version": builder.CreateString(MIN_PARSER_VERSION),
        },
    )
    builder.Finish(model, file_identifier=METADATA_FILE_IDENTIFIER)
    return bytes(builder.Output())


def signature_tensor_names(model_content: bytes) -> tuple[list[str], list[str]]:
    """Returns the signature names of the first subgraph's inputs and outputs, in the subgraph's tensor order."""
    model = schema_fb.Model.GetRootAsModel(model_content, 0)
    subgraph = model.Subgraphs(0)
    signature = model.SignatureDefs(0)
    by_index = {}
    for i in range(signature.InputsLength()):
        by_index[signature.Inputs(i).TensorIndex()] = signature.Inputs(i).Name().decode()
    for i in range(signature.OutputsLength()):
        by_index[signature.Outputs(i).TensorIndex()] = signature.Outputs(i).Name().decode()
    inputs = [by_index[subgraph.Inputs(i)] for i in range(subgraph.InputsLength())]
    outputs = [by_index[subgraph.Outputs(i)] for i in range(subgraph.OutputsLength())]
    return inputs, outputs


def populate(model_content: bytes, metadata: bytes, labels: tuple[str, ...]) -> bytes:
    """Returns the model with `metadata` in its "TFLITE_METADATA" buffer and `labels.txt` zipped after it."""
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(model_content))
    model.buffers.append(schema_fb.BufferT(data=np.frombuffer(metadata, dtype=np.uint8)))
    entry = schema_fb.MetadataT(name=METADATA_BUFFER_NAME, buffer=len(model.buffers) - 1)
    model.metadata = [m for m in (model.metadata or []) if m.name.decode() != METADATA_BUFFER_NAME] + [entry]
    stream = io.BytesIO(flatbuffer_utils.convert_object_to_bytearray(model))
    # Appending a zip to the flatbuffer is how associated files are packed: zip readers start from the end.
    with zipfile.ZipFile(stream, "a", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr(LABELS_FILE, "".join(f"{label}\n" for label in labels))
    return stream.getvalue()


def _field_offset(table: Table, fields: tuple[str, ...], field: str) -> int:
    return table.Offset(4 + 2 * _slot(fields, field))


def _read_string(table: Table, fields: tuple[str, ...], field: str) -> str | None:
    offset = _field_offset(table, fields, field)
    return table.String(offset + table.Pos).decode() if offset else None


def _read_tables(table: Table, fields: tuple[str, ...], field: str) -> list[Table]:
    offset = _field_offset(table, fields, field)
    if not offset:
        return []
    start = table.Vector(offset)
    return [Table(table.Bytes, table.Indirect(start + 4 * i)) for i in range(table.VectorLen(offset))]


def _read_byte(table: Table, fields: tuple[str, ...], field: str) -> int:
    offset = _field_offset(table, fields, field)
    return table.Get(number_types.Int8Flags, offset + table.Pos) if offset else 0


def read_metadata(model_content: bytes) -> dict:
    """Reads back the metadata and the packed label file of a model written by `populate`.

    Returns:
      {"name", "description", "version", "min_parser_version", "inputs": [...], "outputs": [...], "labels"}, each
      tensor as {"name", "description", "label_files": [(file name, file type)]}.

    Raises:
      ValueError: if the model has no "TFLITE_METADATA" buffer or it is not a metadata flatbuffer.
    """
    model = schema_fb.Model.GetRootAsModel(model_content, 0)
    buffer = None
    for i in range(model.MetadataLength()):
        if model.Metadata(i).Name().decode() == METADATA_BUFFER_NAME:
            buffer = model.Buffers(model.Metadata(i).Buffer()).DataAsNumpy().tobytes()
    if buffer is None or not flatbuffers.util.BufferHasIdentifier(buffer, 0, METADATA_FILE_IDENTIFIER):
        raise ValueError(f"expected a '{METADATA_BUFFER_NAME}' buffer of TFLite metadata in the model, found none")
    root = Table(bytearray(buffer), flatbuffers.encode.Get(flatbuffers.packer.uoffset, buffer, 0))

    def tensor(table: Table) -> dict:
        files = [
            (_read_string(f, _FILE_FIELDS, "name"), _ASSOCIATED_FILE_TYPES.get(_read_byte(f, _FILE_FIELDS, "type")))
            for f in _read_tables(table, _TENSOR_FIELDS, "associated_files")
        ]
        return {
            "name": _read_string(table, _TENSOR_FIELDS, "name"),
            "description": _read_string(table, _TENSOR_FIELDS, "description"),
            "label_files": files,
        }

    (subgraph,) = _read_tables(root, _MODEL_FIELDS, "subgraph_metadata")
    with zipfile.ZipFile(io.BytesIO(model_content)) as archive:
        labels = tuple(archive.read(LABELS_FILE).decode().splitlines())
    return {
        "name": _read_string(root, _MODEL_FIELDS, "name"),
        "description": _read_string(root, _MODEL_FIELDS, "description"),
        "version": _read_string(root, _MODEL_FIELDS, "version"),
        "min_parser_version": _read_string(root, _MODEL_FIELDS, "min_parser_version"),
        "inputs": [tensor(t) for t in _read_tables(subgraph, _SUBGRAPH_FIELDS, "input_tensor_metadata")],
        "outputs": [tensor(t) for t in _read_tables(subgraph, _SUBGRAPH_FIELDS, "output_tensor_metadata")],
        "labels": labels,
    }
