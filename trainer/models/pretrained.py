"""Initialising models from local files: keras.applications `.h5` weights and this trainer's checkpoints."""

import dataclasses
import os
import re
from collections.abc import Iterable

import h5py
import numpy as np
import tensorflow as tf
import tf_keras as keras
from absl import logging

from trainer.common.errors import UserInputError
from trainer.storage import checkpoints

# The names keras gives layers built without one: the class's snake-case name and a per-session counter.
GENERIC_LAYER_NAME = re.compile(r"^(conv2d|batch_normalization|layer_normalization)(?:_(\d+))?$")
# Which sub-layers of DeepLabV3Plus each `parts` value restores, in the model's own attribute names.
RESTORABLE_PARTS = {
    "backbone": ("backbone",),
    "backbone+aspp": ("backbone", "aspp"),
    "all": ("backbone", "aspp", "decoder", "classifier"),
}


@dataclasses.dataclass(frozen=True)
class LoadReport:
    """What `load_keras_applications_h5` loaded: keras layer names matched, missing, unused; arrays assigned."""

    matched: tuple[str, ...]
    missing_in_file: tuple[str, ...]
    unused_in_file: tuple[str, ...]
    num_weights_loaded: int
    adapted_to_channels: tuple[str, ...] = ()


def load_keras_applications_h5(backbone: keras.Model, path: str, min_matched_fraction: float = 0.9) -> LoadReport:
    """Copies a keras.applications `.h5` weight file into `backbone` by keras layer name.

    Args:
      backbone: a built backbone with `keras_application_layers()` (ResNet with stem "v1", MobileNetV2).
      path: a file written by `model.save_weights("x.h5")` or `model.save("x.h5")` of the keras application.
      min_matched_fraction: the least fraction of the backbone's mapped layers that the file must provide;
        guards against silently loading (almost) nothing from a file of another architecture.

    Returns:
      A LoadReport; `num_weights_loaded` counts arrays (kernels, biases, BN statistics …) assigned.

    Raises:
      UserInputError: the backbone has no keras mapping or is not built, the file is missing or unreadable, a
        matched layer's weights differ in count or shape, or too few layers match. Nothing is assigned then.
    """
    owner = "load_keras_applications_h5"
    layers = _keras_application_layers(owner, backbone, min_matched_fraction)
    if not os.path.isfile(path):
        raise UserInputError(f"{owner}: expected an existing .h5 weights file, received {path!r} (no such file)")
    file_layers, values = _read_h5(owner, path, layers)
    matched = tuple(values)
    adapted = adapt_rgb_stem(layers, values)
    for name in matched:
        _check_shapes(owner, path, name, layers[name], file_layers[name], values[name])
    if len(matched) < min_matched_fraction * len(layers):
        raise UserInputError(
            f"{owner}: expected at least {min_matched_fraction:.0%} of the {len(layers)} layers of "
            f"{type(backbone).__name__} {backbone.name!r} in {path!r}, received {len(matched)} "
            f"({', '.join(matched[:5]) or 'none'}): is it the weights file of another architecture?"
        )
    for name in matched:
        layers[name].set_weights(values[name])
    report = LoadReport(
        matched=matched,
        missing_in_file=tuple(name for name in layers if name not in file_layers),
        unused_in_file=tuple(name for name in file_layers if name not in layers),
        num_weights_loaded=sum(len(values[name]) for name in matched),
        adapted_to_channels=adapted,
    )
    _log_report(report, len(layers), backbone.name, path)
    return report


def restore_from_checkpoint(model: keras.Model, path: str, parts: str = "backbone") -> tuple[str, ...]:
    """Restores `parts` of a built DeepLabV3Plus from a checkpoint written by this trainer.

    Args:
      model: a built model with sub-layers `backbone`, `aspp`, `decoder`, `classifier`.
      path: a checkpoint prefix (".../ckpt-1000") or a directory holding checkpoints (the latest is used).
      parts: "backbone", "backbone+aspp" or "all". With "all" a classifier whose number of classes differs
        from the checkpoint's keeps its fresh initialisation.

    Returns:
      The names of the restored sub-layers, e.g. ("backbone", "aspp", "decoder").

    Raises:
      UserInputError: `parts` is unknown, the model is not built, no checkpoint is found, or a requested part is
        missing from the checkpoint or does not match it variable for variable.
    """
    owner = "restore_from_checkpoint"
    names = _restorable_parts(owner, model, parts)
    prefix = checkpoints.resolve_checkpoint(path, owner)
    if "classifier" in names and not _same_classifier(model, prefix):
        names = tuple(name for name in names if name != "classifier")
    # Only these parts are restored (as `model/<part>/...`, the names of the training checkpoint); the optimizer
    # slots, the step and the other parts in the file are deliberately left behind.
    remedy = (
        f"Expected it to hold {', '.join(names)} of a model like {type(model).__name__} {model.name!r}, saved as "
        f"`{checkpoints.MODEL_KEY}` of a tf.train.Checkpoint; init.checkpoint_parts chooses the parts."
    )
    try:
        checkpoints.restore_model_weights(model, prefix, owner, parts=names, remedy=remedy)
    except tf.errors.OpError as error:
        raise UserInputError(f"{owner}: cannot read the checkpoint {prefix!r}: {error}") from error
    logging.info("Restored %s of %s from %s.", ", ".join(names), model.name, prefix)
    return names


def _keras_application_layers(
    owner: str, backbone: keras.Model, min_matched_fraction: float
) -> dict[str, keras.layers.Layer]:
    """The backbone's layers by keras.applications name, once the arguments are checked."""
    if not callable(getattr(backbone, "keras_application_layers", None)):
        raise UserInputError(
            f"{owner}: expected a backbone with a `keras_application_layers()` method (ResNet, MobileNetV2), "
            f"received {type(backbone).__name__}; other backbones can only start from a checkpoint of this trainer"
        )
    if isinstance(min_matched_fraction, bool) or not isinstance(min_matched_fraction, int | float):
        raise UserInputError(f"{owner}: expected `min_matched_fraction` in (0, 1], received {min_matched_fraction!r}")
    if not 0 < min_matched_fraction <= 1:
        raise UserInputError(f"{owner}: expected `min_matched_fraction` in (0, 1], received {min_matched_fraction!r}")
    layers = backbone.keras_application_layers()
    unbuilt = [name for name, layer in layers.items() if not layer.weights]
    if unbuilt:
        raise UserInputError(
            f"{owner}: expected a built backbone (call it on an input first), "
            f"received {type(backbone).__name__} {backbone.name!r} whose layers {unbuilt[:3]} have no weights yet"
        )
    return layers


def _read_h5(
    owner: str, path: str, layers: dict[str, keras.layers.Layer]
) -> tuple[dict[str, list[str]], dict[str, list[np.ndarray]]]:
    """Reads the file's {layer: weight names} and the arrays of the `layers` it has, in the backbone's order."""
    try:
        with h5py.File(path, "r") as h5:
            weights_group = h5["model_weights"] if "model_weights" in h5 else h5
            file_layers = _layers_with_weights(weights_group)
            if file_layers is None:
                raise UserInputError(
                    f"{owner}: expected a keras .h5 weights file with a `layer_names` attribute (at the root or "
                    f"under `model_weights`), received {path!r} without one"
                )
            actual = canonical_layer_names(file_layers)
            file_layers = {name: file_layers[actual[name]] for name in actual}
            matched = [name for name in layers if name in file_layers]
            values = {name: _read_weights(weights_group[actual[name]], file_layers[name]) for name in matched}
            return file_layers, values
    except OSError as error:
        raise UserInputError(f"{owner}: cannot read {path!r} as an HDF5 file: {error}") from error


def rgb_kernel_for_channels(kernel: np.ndarray, channels: int) -> np.ndarray:
    """A convolution kernel [kh, kw, 3, out] of RGB inputs adapted to `channels` inputs.

    Each new input channel gets the mean of the RGB kernels scaled by 3 / channels, so an image whose channels
    all equal a grey image g gives the response the RGB kernel gives to g replicated to RGB.
    """
    mean = kernel.mean(axis=2, keepdims=True)
    return np.repeat(mean * (3.0 / channels), channels, axis=2).astype(kernel.dtype)


def adapt_rgb_stem(layers: dict[str, keras.layers.Layer], values: dict[str, list[np.ndarray]]) -> tuple[str, ...]:
    """Adapts, in `values`, the RGB kernels of layers built for another number of input channels; their names.

    A layer qualifies when its file kernel is [kh, kw, 3, out] and its own is [kh, kw, C, out], C != 3: the
    stem convolution of a backbone built on a C-channel dataset.
    """
    adapted = []
    for name, arrays in values.items():
        weights = layers[name].weights
        if not arrays or not weights or arrays[0].ndim != 4 or len(weights[0].shape) != 4:
            continue
        channels = int(weights[0].shape[2])
        if arrays[0].shape[2] == 3 and channels != 3 and arrays[0].shape[3] == weights[0].shape[3]:
            values[name] = [rgb_kernel_for_channels(arrays[0], channels), *arrays[1:]]
            adapted.append(f"{name} (3 -> {channels} input channels)")
    return tuple(adapted)


def canonical_layer_names(names: Iterable[str]) -> dict[str, str]:
    """{canonical name: name}: keras' unnamed layers renumbered as a fresh session numbers them, others as they are.

    Keras names a layer built without a name after its class and a per-session counter, so the residual convs of
    keras' Xception are `conv2d_4` ... `conv2d_7` in one file and `conv2d` ... `conv2d_3` in another. Ordered by
    their counter (their build order), they become `conv2d`, `conv2d_1`, ... here, whatever session saved them.
    """
    names = list(names)
    canonical = {name: name for name in names if not GENERIC_LAYER_NAME.match(name)}
    numbered: dict[str, list[tuple[int, str]]] = {}
    for name in names:
        match = GENERIC_LAYER_NAME.match(name)
        if match:
            numbered.setdefault(match.group(1), []).append((int(match.group(2) or 0), name))
    for prefix, entries in numbered.items():
        for index, (_, name) in enumerate(sorted(entries)):
            canonical[f"{prefix}_{index}" if index else prefix] = name
    return canonical


def _log_report(report: LoadReport, num_layers: int, backbone_name: str, path: str) -> None:
    logging.info(
        "Loaded %d arrays into %d of %d layers of %s from %s.",
        report.num_weights_loaded,
        len(report.matched),
        num_layers,
        backbone_name,
        path,
    )
    if report.adapted_to_channels:
        logging.info(
            "Adapted the RGB kernels of %s: the mean over R, G and B repeated per input channel, scaled by 3/C.",
            ", ".join(report.adapted_to_channels),
        )
    if report.missing_in_file:
        logging.warning("Not in %s (left at their initialisation): %s", path, ", ".join(report.missing_in_file))
    if report.unused_in_file:
        logging.warning("In %s but not in %s (ignored): %s", path, backbone_name, ", ".join(report.unused_in_file))


def _restorable_parts(owner: str, model: keras.Model, parts: str) -> tuple[str, ...]:
    """The sub-layer names `parts` designates, once the model is checked to have them built."""
    if parts not in RESTORABLE_PARTS:
        raise UserInputError(f"{owner}: expected `parts` in {tuple(RESTORABLE_PARTS)}, received {parts!r}")
    names = RESTORABLE_PARTS[parts]
    for name in names:
        part = getattr(model, name, None)
        if not isinstance(part, keras.layers.Layer):
            raise UserInputError(
                f"{owner}: expected a model with a `{name}` sub-layer for parts={parts!r}, "
                f"received {type(model).__name__} without one"
            )
        if not part.weights:
            # A restore into unbuilt layers is deferred and could not be verified here.
            raise UserInputError(
                f"{owner}: expected a built model (call it on an input first), "
                f"received {type(model).__name__} {model.name!r} whose `{name}` has no weights yet"
            )
    return names


def _same_classifier(model: keras.Model, prefix: str) -> bool:
    """False (and says so) when the checkpoint's classifier has another shape: another number of classes."""
    saved_shape = _saved_shape(prefix, "classifier/kernel")
    own_shape = tuple(model.classifier.kernel.shape)
    if saved_shape is None or saved_shape == own_shape:
        return True
    logging.info(
        "Classifier re-initialised: its kernel is %s here but %s in %s (another number of classes).",
        own_shape,
        saved_shape,
        prefix,
    )
    return False


def _layers_with_weights(group: h5py.Group) -> dict[str, list[str]] | None:
    """Returns {layer name: weight names} for the layers with weights in a keras .h5 group, None if not one."""
    layer_names = _string_attribute(group, "layer_names")
    if layer_names is None:
        return None
    layers = {}
    for name in layer_names:
        weight_names = _string_attribute(group[name], "weight_names") or []
        if weight_names:
            layers[name] = weight_names
    return layers


def _string_attribute(group: h5py.Group, name: str) -> list[str] | None:
    """Reads a list-of-strings attribute, which keras splits into `name0`, `name1`, … when it is large."""
    if name in group.attrs:
        chunks = [group.attrs[name]]
    else:
        chunks = []
        while f"{name}{len(chunks)}" in group.attrs:
            chunks.append(group.attrs[f"{name}{len(chunks)}"])
        if not chunks:
            return None
    return [value.decode("utf8") if isinstance(value, bytes) else str(value) for chunk in chunks for value in chunk]


def _read_weights(layer_group: h5py.Group, weight_names: list[str]) -> list[np.ndarray]:
    """Reads a layer's arrays in the order keras saved them, which is the order of `layer.weights`."""
    return [np.asarray(layer_group[weight_name]) for weight_name in weight_names]


def _check_shapes(
    owner: str,
    path: str,
    name: str,
    layer: keras.layers.Layer,
    weight_names: list[str],
    values: list[np.ndarray],
) -> None:
    """Raises UserInputError naming the layer when the file's arrays do not fit `layer`'s weights one to one."""
    if len(values) != len(layer.weights):
        raise UserInputError(
            f"{owner}: layer {name!r} in {path!r}: expected {len(layer.weights)} arrays "
            f"({', '.join(w.name for w in layer.weights)}), received {len(values)} ({', '.join(weight_names)})"
        )
    for weight, weight_name, value in zip(layer.weights, weight_names, values, strict=True):
        if tuple(weight.shape) != value.shape:
            raise UserInputError(
                f"{owner}: layer {name!r} in {path!r}: expected {weight_name} of shape {tuple(weight.shape)} "
                f"(the backbone's), received shape {value.shape}"
            )


def _saved_shape(prefix: str, model_variable: str) -> tuple[int, ...] | None:
    """The shape saved for `model/<model_variable>` in the checkpoint, or None if it has none."""
    key = f"{checkpoints.MODEL_KEY}/{model_variable}/.ATTRIBUTES/VARIABLE_VALUE"
    shapes = tf.train.load_checkpoint(prefix).get_variable_to_shape_map()
    return tuple(shapes[key]) if key in shapes else None
