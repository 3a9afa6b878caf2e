"""Checks that a backbone is layer for layer its tf_keras.applications counterpart, shared by the backbone tests."""

import math

import numpy as np
import tensorflow as tf
import tf_keras as keras

from trainer.models.pretrained import canonical_layer_names

# Keras' preprocessing layers: fixed statistics, no counterpart among a backbone's layers (it computes the same
# normalisation with constants).
PREPROCESSING_LAYERS = (keras.layers.Normalization, keras.layers.Rescaling)


def randomize(keras_model: keras.Model, seed: int = 0) -> None:
    """He-normal kernels, non-trivial biases, scales and BN statistics, so every layer visibly shapes the output.

    With keras' initialisers (identity BN, tiny layer scales) a missing residual or a wrong padding deep in the
    network changes the output by less than the tolerance.
    """
    rng = np.random.default_rng(seed)
    for layer in keras_model.submodules:
        if not isinstance(layer, keras.layers.Layer) or isinstance(layer, PREPROCESSING_LAYERS) or layer.submodules:
            continue
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, variance = (w.shape for w in layer.weights)
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, gamma),
                    rng.normal(0.0, 0.1, beta),
                    rng.normal(0.0, 0.1, mean),
                    rng.uniform(0.5, 1.5, variance),
                ]
            )
            continue
        values = []
        for weight in layer.weights:
            shape = tuple(weight.shape)
            if "depthwise_kernel" in weight.name:
                values.append(rng.normal(0.0, math.sqrt(2.0 / (shape[0] * shape[1])), shape))
            elif len(shape) >= 2:
                values.append(rng.normal(0.0, math.sqrt(2.0 / math.prod(shape[:-1])), shape))
            elif "gamma" in weight.name:
                values.append(rng.uniform(0.5, 1.5, shape))
            else:
                values.append(rng.normal(0.0, 0.1, shape))
        layer.set_weights(values)


def keras_layers_by_canonical_name(keras_model: keras.Model) -> dict[str, keras.layers.Layer]:
    """The keras model's top-level layers with weights, its preprocessing layers left out, by the name they have
    in a weights file once its unnamed layers are renumbered (`canonical_layer_names`)."""
    layers = [layer for layer in keras_model.layers if layer.weights and not isinstance(layer, PREPROCESSING_LAYERS)]
    by_name = {layer.name: layer for layer in layers}
    return {canonical: by_name[name] for canonical, name in canonical_layer_names(by_name).items()}


def leaf_layers_with_weights(model: keras.layers.Layer) -> set[int]:
    """ids of the layers of `model` that own weights themselves (not only through sublayers)."""
    own = set()
    for layer in model.submodules:
        if not isinstance(layer, keras.layers.Layer) or not layer.weights:
            continue
        nested = {id(w) for sub in layer.submodules if isinstance(sub, keras.layers.Layer) for w in sub.weights}
        if any(id(w) not in nested for w in layer.weights):
            own.add(id(layer))
    return own


def copy_keras_weights(keras_model: keras.Model, backbone: keras.Model) -> None:
    """Copies every mapped keras layer's weights into the backbone's layer of that name."""
    keras_layers = keras_layers_by_canonical_name(keras_model)
    for name, layer in backbone.keras_application_layers().items():
        weights = keras_layers[name].get_weights()
        assert [w.shape for w in weights] == [tuple(w.shape) for w in layer.weights], name
        layer.set_weights(weights)


def assert_layer_for_layer(keras_model: keras.Model, backbone: keras.Model) -> None:
    """The name map covers exactly keras' weighted layers and each of ours once."""
    mapping = backbone.keras_application_layers()
    assert set(mapping) == set(keras_layers_by_canonical_name(keras_model))
    mapped = {id(layer) for layer in mapping.values()}
    covered = {id(sub) for layer in mapping.values() for sub in [layer, *layer.submodules]}
    assert leaf_layers_with_weights(backbone) <= covered
    assert len(mapped) == len(mapping)


def assert_outputs_match(keras_model, backbone, keras_inputs, our_inputs, low_level_layer) -> None:
    """High-level features equal keras' output, low-level ones the output of its layer `low_level_layer` (or that
    symbolic tensor of the keras model), within 1e-4."""
    expected = keras_model(keras_inputs, training=False)
    features = backbone(our_inputs, training=False)
    assert features["high_level"].shape == expected.shape
    assert float(tf.math.reduce_std(expected)) > 0.1  # the comparison below is not between near-zero tensors
    np.testing.assert_allclose(features["high_level"].numpy(), expected.numpy(), atol=1e-4)
    if isinstance(low_level_layer, str):
        low_level_layer = keras_model.get_layer(low_level_layer).output
    low_level = keras.Model(keras_model.input, low_level_layer)(keras_inputs)
    np.testing.assert_allclose(features["low_level"].numpy(), low_level.numpy(), atol=1e-4)
