"""HubBackbone: a tiny backbone saved as a SavedModel (as TF Hub publishes them) loads, trains and exports."""

import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tests.helpers import one_device_strategy, parse_smoke_config
from trainer import train_lib
from trainer.common.errors import UserInputError
from trainer.models import DeepLabV3Plus, HubBackbone

pytestmark = pytest.mark.slow

HUB_BINDINGS = (
    "DeepLabV3Plus.backbone = @HubBackbone()",
    "HubBackbone.low_level_key = 'stride4'",
    "HubBackbone.high_level_key = 'stride16'",
)


def _tiny_backbone() -> keras.Model:
    """Features at strides 4 and 16, with batch norm (whose statistics must update in training mode)."""
    images = keras.Input([None, None, 3])
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same", activation="relu")(images)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same")(x)
    # Named like the outputs: Keras names a signature's outputs after the layers that produce them.
    stride4 = keras.layers.ReLU(name="stride4")(keras.layers.BatchNormalization()(x))
    stride16 = keras.layers.Conv2D(16, 3, strides=4, padding="same", activation="relu", name="stride16")(stride4)
    return keras.Model(images, {"stride4": stride4, "stride16": stride16})


@pytest.fixture(scope="module")
def hub_dir(tmp_path_factory) -> str:
    """The tiny backbone, saved the way TF2 models are published on TF Hub / Kaggle Models."""
    path = str(tmp_path_factory.mktemp("hub") / "tiny_backbone")
    keras.utils.set_random_seed(1)
    tf.saved_model.save(_tiny_backbone(), path)
    return path


@pytest.fixture(scope="module")
def vector_dir(tmp_path_factory) -> str:
    """A module that returns one pooled feature vector, like an image-classification feature extractor."""
    images = keras.Input([None, None, 3])
    features = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(images))
    path = str(tmp_path_factory.mktemp("hub") / "feature_vector")
    tf.saved_model.save(keras.Model(images, features), path)
    return path


def test_features_are_the_modules_on_rescaled_inputs(hub_dir):
    backbone = HubBackbone(hub_dir, "stride4", "stride16")
    assert backbone.output_stride == 16
    assert len(backbone.trainable_weights) == 8 and len(backbone.non_trainable_weights) == 2  # BN statistics
    images = tf.random.stateless_uniform([2, 64, 64, 3], seed=[1, 2], minval=-1.0, maxval=1.0)
    features = backbone(images, training=False)
    # TF Hub image modules take [0, 1]; the pipeline's images are in [-1, 1].
    expected = tf.saved_model.load(hub_dir)((images + 1.0) / 2.0, training=False)
    np.testing.assert_allclose(features["low_level"], expected["stride4"], atol=1e-6)
    np.testing.assert_allclose(features["high_level"], expected["stride16"], atol=1e-6)
    assert features["low_level"].shape == (2, 16, 16, 8) and features["high_level"].shape == (2, 4, 4, 16)


def test_signature_path_gives_the_same_inference_features(hub_dir):
    called = HubBackbone(hub_dir, "stride4", "stride16", input_range=(-1, 1))
    by_signature = HubBackbone(hub_dir, "stride4", "stride16", signature="serving_default", input_range=(-1, 1))
    images = tf.random.stateless_uniform([1, 32, 32, 3], seed=[3, 4], minval=-1.0, maxval=1.0)
    for key in ("low_level", "high_level"):
        np.testing.assert_allclose(called(images)[key], by_signature(images)[key], atol=1e-6)


def test_config_round_trip_keeps_the_measured_stride(hub_dir):
    backbone = HubBackbone(hub_dir, "stride4", "stride16", trainable=False)
    rebuilt = HubBackbone.from_config(backbone.get_config())
    assert rebuilt.get_config() == backbone.get_config()
    assert rebuilt.output_stride == 16 and rebuilt.trainable_weights == []


def test_trains_one_step_checkpoints_and_exports(hub_dir, tmp_path):
    model_dir = str(tmp_path / "run")
    parse_smoke_config(
        str(tmp_path / "data"),
        *HUB_BINDINGS,
        f"HubBackbone.path = '{hub_dir}'",
        "train.steps = 1",
        "train.steps_per_loop = 1",
        "export.at_end_of_training = True",
    )
    train_lib.run("train", model_dir, strategy=one_device_strategy())

    module = tf.saved_model.load(hub_dir)
    reader = tf.train.load_checkpoint(os.path.join(model_dir, "checkpoints"))
    trained = {
        key.split("/")[2]: reader.get_tensor(key)
        for key in reader.get_variable_to_shape_map()
        if key.startswith("model/backbone/") and key.endswith("/.ATTRIBUTES/VARIABLE_VALUE")
    }
    assert len(trained) == len(module.variables)
    for index, variable in enumerate(module.variables):
        (name,) = [key for key in trained if key.startswith(f"{index:04d}_")]
        # One SGD step moves every trainable weight; training-mode batch norm moves its statistics.
        assert not np.array_equal(trained[name], variable.numpy()), variable.name

    # Exported at the end of training; the export rebuilt the model from its config, re-reading the module.
    serve = tf.saved_model.load(os.path.join(model_dir, "export", "1")).signatures["serving_default"]
    assert serve(images=tf.zeros([1, 40, 40, 3], tf.uint8))["class_map"].shape == (1, 40, 40)


def test_bad_modules_and_keys_are_config_errors(hub_dir, vector_dir, tmp_path):
    with pytest.raises(UserInputError, match="HubBackbone.path: expected a local directory holding a SavedModel"):
        HubBackbone(str(tmp_path / "missing"), "stride4", "stride16")
    with pytest.raises(UserInputError, match=r"expected keys among the module's outputs \['stride16', 'stride4'\]"):
        HubBackbone(hub_dir, "2", "stride16")
    with pytest.raises(UserInputError, match=r"received one tensor of shape \(1, 4\); a module that returns a pooled"):
        HubBackbone(vector_dir, "2", "5")
    with pytest.raises(UserInputError, match=r"HubBackbone.signature: expected one of .*\['serving_default'\]"):
        HubBackbone(hub_dir, "stride4", "stride16", signature="image_feature_vector")


def test_deeplab_head_takes_the_hub_backbone(hub_dir):
    model = DeepLabV3Plus(num_classes=3, backbone=HubBackbone(hub_dir, "stride4", "stride16"), aspp_filters=8)
    assert model.aspp_rates == (6, 12, 18)  # derived from the measured output stride 16
    logits = model(tf.zeros([1, 48, 48, 3]), training=False)
    assert logits.shape == (1, 48, 48, 3)
