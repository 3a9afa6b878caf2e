"""Tests for trainer/models/keras_weights.py and `init.keras_weights`, offline: a generated .h5 behind file://."""

import hashlib
import os
import tempfile

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from trainer.common.errors import UserInputError
from trainer.core import initialization
from trainer.core.initialization import InitConfig, initialize_model
from trainer.models import (
    ConvNeXt,
    DeepLabV3Plus,
    EfficientNetV2,
    KerasXception,
    MobileNetV3,
    ResNet,
    keras_weights,
    pretrained,
)
from trainer.models.keras_weights import WeightsFile

ALPHA = 0.35
SIZE = 64


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A keras MobileNetV3Small's weights saved as .h5 in a 'server' directory, its file:// origin and sha256."""
    server = tmp_path_factory.mktemp("server")
    keras_model = keras.applications.MobileNetV3Small(
        input_shape=(SIZE, SIZE, 3), alpha=ALPHA, include_top=False, weights=None, include_preprocessing=False
    )
    for weight in keras_model.weights:
        weight.assign(tf.random.stateless_normal(weight.shape, seed=[1, len(weight.name)]) * 0.1 + 0.5)
    path = os.path.join(server, "weights_mobilenet_v3_small_test_no_top.h5")
    keras_model.save_weights(path)
    with open(path, "rb") as file:
        sha256 = hashlib.sha256(file.read()).hexdigest()
    return keras_model, WeightsFile(os.path.basename(path), f"file://{path}", sha256)


def _backbone():
    backbone = MobileNetV3("small", output_stride=32, width_multiplier=ALPHA)
    backbone(tf.zeros([1, SIZE, SIZE, 3]))
    return backbone


def test_published_files_per_family():
    cases = {
        ResNet(block_depths=(3, 4, 23, 3)): "resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5",
        KerasXception(): "xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
        EfficientNetV2("s"): "efficientnetv2-s_notop.h5",
        ConvNeXt("base"): "convnext_base_notop.h5",
        MobileNetV3("large", minimalistic=True): "weights_mobilenet_v3_large_minimalistic_224_1.0_float_no_top_v2.h5",
    }
    for backbone, file_name in cases.items():
        weights = keras_weights.imagenet_weights_file(backbone)
        assert weights.file_name == file_name
        assert weights.origin.startswith(keras_weights.KERAS_APPLICATIONS) and weights.origin.endswith(file_name)
        assert len(weights.file_hash) in (32, 64)
    for unpublished in (
        EfficientNetV2("b0", width_coefficient=0.5),
        ResNet(base_filters=8),
        MobileNetV3(width_multiplier=0.5),
    ):
        with pytest.raises(
            UserInputError, match=r"init.keras_weights = 'imagenet': expected a backbone .* init.keras_h5"
        ):
            keras_weights.imagenet_weights_file(unpublished)


def test_fetch_downloads_into_the_cache_checks_the_hash_and_loads(served, tmp_path):
    keras_model, weights = served
    path = keras_weights.fetch(weights, str(tmp_path))
    assert path == os.path.join(tmp_path, "models", weights.file_name)
    assert keras_weights.fetch(weights, str(tmp_path)) == path  # cached: the hash matches, nothing is downloaded
    backbone = _backbone()
    report = pretrained.load_keras_applications_h5(backbone, path)
    assert len(report.matched) == len(backbone.keras_application_layers())
    images = tf.random.uniform([1, SIZE, SIZE, 3], -1.0, 1.0, seed=2)
    np.testing.assert_allclose(backbone(images)["high_level"].numpy(), keras_model(images).numpy(), atol=1e-4)


def test_a_wrong_hash_fails_naming_the_file(served, tmp_path):
    _, weights = served
    wrong = WeightsFile(weights.file_name, weights.origin, "0" * 64)
    with pytest.raises(
        UserInputError, match=rf"{weights.file_name} from file://.* does not have the published hash 0+"
    ):
        keras_weights.fetch(wrong, str(tmp_path))


def test_an_unreachable_origin_fails_in_one_line_naming_the_url_and_keras_h5(tmp_path):
    missing = WeightsFile("absent.h5", f"file://{tmp_path}/nowhere/absent.h5", "0" * 32)
    with pytest.raises(UserInputError) as error:
        keras_weights.fetch(missing, str(tmp_path / "cache"))
    message = str(error.value)
    assert "\n" not in message
    assert f"cannot download file://{tmp_path}/nowhere/absent.h5" in message and "init.keras_h5" in message


def test_a_remote_cache_is_filled_then_read(served):
    _, weights = served
    cache = "ram://keras_weights_test_cache"
    keras_weights.fetch(weights, cache)
    assert tf.io.gfile.exists(f"{cache}/models/{weights.file_name}")
    os.remove(os.path.join(tempfile.gettempdir(), "deeplab_keras_weights", "models", weights.file_name))
    # The origin is gone: the file comes from the remote cache, checked against its hash.
    offline = WeightsFile(weights.file_name, "file:///nonexistent/weights.h5", weights.file_hash)
    assert os.path.isfile(keras_weights.fetch(offline, cache))


def test_init_keras_weights_downloads_and_loads_the_backbone(served, tmp_path, monkeypatch):
    keras_model, weights = served
    monkeypatch.setattr(keras_weights, "imagenet_weights_file", lambda backbone: weights)
    model = DeepLabV3Plus(3, backbone=MobileNetV3("small", output_stride=32, width_multiplier=ALPHA), aspp_filters=8)
    model(tf.zeros([1, SIZE, SIZE, 3]))
    initialize_model(model, InitConfig(keras_weights="imagenet", weights_cache_dir=str(tmp_path)))
    conv = model.backbone.keras_application_layers()["expanded_conv_3/depthwise"]
    np.testing.assert_array_equal(
        conv.get_weights()[0], keras_model.get_layer("expanded_conv_3/depthwise").get_weights()[0]
    )


def test_the_default_never_touches_the_network(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("downloaded")

    monkeypatch.setattr(keras.utils, "get_file", no_network)
    model = DeepLabV3Plus(3, backbone=MobileNetV3("small", width_multiplier=ALPHA), aspp_filters=8)
    initialize_model(model, InitConfig())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"keras_weights": "coco"}, r"init.keras_weights: expected one of \{imagenet\}, received 'coco'"),
        ({"keras_weights": "imagenet", "keras_h5": "x.h5"}, r"init.keras_weights and init.keras_h5: expected at most"),
        (
            {"keras_weights": "imagenet", "checkpoint": "ck"},
            r"init.keras_weights and init.checkpoint: expected at most",
        ),
    ],
)
def test_bad_bindings(kwargs, message):
    assert initialization.KERAS_WEIGHTS == ("imagenet",)
    with pytest.raises(UserInputError, match=message):
        InitConfig(**kwargs)
