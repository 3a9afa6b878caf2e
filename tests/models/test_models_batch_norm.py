"""`batch_norm.*` reaches every BN layer of every model, read back from the layers; defaults stay as they were."""

import gin
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tests.helpers import REPO_ROOT, mirrored_strategy  # helpers also register every gin configurable
from trainer.common.errors import UserInputError
from trainer.models import (
    BatchNorm,
    BatchNormConfig,
    ConvBNReLU,
    DeepLabV3,
    DeepLabV3Plus,
    HubBackbone,
    configure_batch_norm,
)
from trainer.models.batch_norm import batch_norm_layer

ALL_BINDINGS = (
    "batch_norm.epsilon = 1e-5",
    "batch_norm.momentum = 0.9997",
    "batch_norm.sync = True",
    "batch_norm.freeze_statistics = True",
)
TINY_BACKBONES = {
    "ResNet": ("ResNet.block_depths = (1, 1, 1, 1)", "ResNet.base_filters = 8"),
    "Xception65": ("Xception65.width_multiplier = 0.0625", "Xception65.middle_flow_blocks = 1"),
    "MobileNetV2": ("MobileNetV2.width_multiplier = 0.35",),
}
HEADS = {"DeepLabV3Plus": DeepLabV3Plus, "DeepLabV3": DeepLabV3}
# (momentum, epsilon) of each family's BN layers before the settings were explicit: ResNet's epsilon and
# MobileNetV2's momentum are those of the Keras ImageNet weights; the head and Xception have Keras' defaults.
DEFAULTS = {"ResNet": (0.99, 1.001e-5), "Xception65": (0.99, 1e-3), "MobileNetV2": (0.999, 1e-3), "head": (0.99, 1e-3)}
IMAGES = tf.zeros([1, 64, 64, 3])


@pytest.fixture(autouse=True)
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def _batch_norms(layer: keras.layers.Layer) -> list[keras.layers.BatchNormalization]:
    return [module for module in layer.submodules if isinstance(module, keras.layers.BatchNormalization)]


def _tiny_model(head: str, backbone: str, *bindings: str) -> keras.Model:
    """The model as a config builds it: the head, its backbone and all sizes through gin."""
    tiny_head = [f"{head}.aspp_filters = 8"]
    if head == "DeepLabV3Plus":
        tiny_head += ["DeepLabV3Plus.decoder_filters = 8", "DeepLabV3Plus.low_level_filters = 4"]
    gin.parse_config([f"{head}.backbone = @{backbone}()", *TINY_BACKBONES[backbone], *tiny_head, *bindings])
    return HEADS[head](num_classes=3)


@pytest.mark.parametrize("head", sorted(HEADS))
@pytest.mark.parametrize("backbone", sorted(TINY_BACKBONES))
def test_every_binding_reaches_every_batch_norm_layer(head, backbone):
    model = _tiny_model(head, backbone, *ALL_BINDINGS)
    configured = configure_batch_norm(model, BatchNormConfig())
    model(IMAGES, training=False)
    norms = _batch_norms(model)
    assert configured == len(norms) > 0
    assert all(isinstance(norm, BatchNorm) for norm in norms)
    read_back = {(norm.momentum, norm.epsilon, norm.synchronized, norm.freeze_statistics) for norm in norms}
    assert read_back == {(0.9997, 1e-5, True, True)}


@pytest.mark.parametrize("head", sorted(HEADS))
@pytest.mark.parametrize("backbone", sorted(TINY_BACKBONES))
def test_without_bindings_every_layer_keeps_its_family_defaults(head, backbone):
    model = _tiny_model(head, backbone)
    configured = configure_batch_norm(model, BatchNormConfig())
    model(IMAGES, training=False)
    in_backbone = {id(norm) for norm in _batch_norms(model.backbone)}
    norms = _batch_norms(model)
    assert configured == len(norms) > len(in_backbone) > 0
    for norm in norms:
        family = backbone if id(norm) in in_backbone else "head"
        assert (norm.momentum, norm.epsilon, norm.synchronized, norm.freeze_statistics) == (
            *DEFAULTS[family],
            False,
            False,
        )
        assert norm.fused  # the unsynchronised layers keep Keras' fused kernel


@pytest.mark.parametrize(
    "gin_file, overrides",
    [
        ("configs/pascal_voc_resnet101_os16.gin", TINY_BACKBONES["ResNet"]),
        ("configs/cityscapes_resnet101_os16.gin", TINY_BACKBONES["ResNet"]),
        ("configs/pascal_voc_xception65_os16.gin", TINY_BACKBONES["Xception65"]),
    ],
)
def test_a_recipes_batch_norm_bindings_reach_the_backbone_too(gin_file, overrides):
    # These recipes set epsilon 1e-5; before the settings were explicit, ResNet's 17 BN layers kept 1.001e-5.
    gin.add_config_file_search_path(REPO_ROOT)
    gin.parse_config_files_and_bindings([gin_file], [*overrides, "DeepLabV3Plus.aspp_filters = 8"])
    model = gin.query_parameter("run.model").scoped_configurable_fn(num_classes=21)
    configured = configure_batch_norm(model, BatchNormConfig())
    model(IMAGES, training=False)
    norms = _batch_norms(model)
    assert configured == len(norms) and len(_batch_norms(model.backbone)) > 0
    assert {(norm.momentum, norm.epsilon, norm.synchronized) for norm in norms} == {(0.9997, 1e-5, True)}


def test_synchronised_layers_normalise_with_the_global_batch_statistics():
    # Keras picks the fused kernel, which never all-reduces, unless `synchronized` is set in __init__: a layer
    # synchronised afterwards must still normalise each replica's images with the statistics of both replicas.
    strategy = mirrored_strategy()
    with strategy.scope():
        norm = batch_norm_layer("bn")
        configure_batch_norm(norm, BatchNormConfig(sync=True))
    values = tf.constant([0.0, 1.0, 2.0, 7.0])
    dataset = tf.data.Dataset.from_tensor_slices(tf.reshape(values, [4, 1, 1, 1])).batch(4)
    batch = next(iter(strategy.experimental_distribute_dataset(dataset)))
    outputs = strategy.run(tf.function(lambda x: norm(x, training=True)), args=(batch,))
    normalised = np.concatenate([t.numpy().ravel() for t in strategy.experimental_local_results(outputs)])
    expected = (values.numpy() - values.numpy().mean()) / np.sqrt(values.numpy().var() + norm.epsilon)
    np.testing.assert_allclose(normalised, expected, rtol=1e-5)
    assert norm.fused is False


def test_frozen_and_synchronised_layers_keep_the_fused_kernel():
    # Frozen statistics are never computed from the batch: nothing to synchronise, as when freezing came first.
    norm = batch_norm_layer("bn")
    configure_batch_norm(norm, BatchNormConfig(sync=True, freeze_statistics=True))
    norm(tf.ones([1, 2, 2, 3]))
    assert norm.fused is True and norm.synchronized and norm.freeze_statistics


def test_configured_values_survive_get_config_and_from_config():
    model = _tiny_model("DeepLabV3Plus", "ResNet")
    config = BatchNormConfig(sync=True, epsilon=1e-5)
    configure_batch_norm(model, config)
    assert model.get_config()["batch_norm"] == {"sync": True, "epsilon": 1e-5}
    clone = DeepLabV3Plus.from_config(model.get_config())
    assert clone.get_config() == model.get_config()
    norms = _batch_norms(clone)
    assert len(norms) == len(_batch_norms(model))
    assert {(norm.momentum, norm.epsilon, norm.synchronized) for norm in norms} == {(0.99, 1e-5, True)}
    # Each layer that holds BN layers keeps them too, and so does each BN layer's own config.
    conv = model.backbone.stem_conv
    assert ConvBNReLU.from_config(conv.get_config()).bn.synchronized
    assert conv.bn.get_config()["synchronized"] is True
    # Settings applied twice add up.
    configure_batch_norm(clone, BatchNormConfig(momentum=0.9))
    assert clone.get_config()["batch_norm"] == {"sync": True, "momentum": 0.9, "epsilon": 1e-5}


def test_unconfigured_configs_are_as_before():
    model = _tiny_model("DeepLabV3", "MobileNetV2")
    configure_batch_norm(model, BatchNormConfig())
    assert "batch_norm" not in model.get_config()
    assert DeepLabV3.from_config(model.get_config()).get_config() == model.get_config()


def test_frozen_statistics_layers_saved_under_their_old_class_still_load():
    saved = {
        "class_name": "deeplab_trainer>FrozenStatisticsBatchNormalization",
        "config": {"name": "bn", "momentum": 0.9, "epsilon": 1e-5},
    }
    norm = keras.saving.deserialize_keras_object(saved)
    assert isinstance(norm, BatchNorm) and norm.freeze_statistics
    assert (norm.momentum, norm.epsilon, norm.synchronized) == (0.9, 1e-5, False)


def _keras_backbone() -> keras.Model:
    """A backbone built with Keras' own BatchNormalization, as a keras.applications model would be."""
    images = keras.Input([None, None, 3])
    low = keras.layers.Conv2D(4, 3, strides=4, padding="same")(images)
    low = keras.layers.BatchNormalization(name="foreign_bn")(low)
    high = keras.layers.Conv2D(8, 3, strides=4, padding="same")(low)
    backbone = keras.Model(images, {"low_level": low, "high_level": high}, name="keras_backbone")
    backbone.output_stride = 16
    return backbone


def test_a_keras_batch_norm_the_settings_cannot_reach_fails_naming_it():
    model = DeepLabV3Plus(3, backbone=_keras_backbone(), aspp_filters=8, decoder_filters=8, low_level_filters=4)
    with pytest.raises(UserInputError, match=r"batch_norm.epsilon = 1e-05.*'foreign_bn' \(BatchNormalization\)"):
        configure_batch_norm(model, BatchNormConfig(epsilon=1e-5))
    # Nothing was half-applied, and without settings there is nothing to refuse.
    assert {norm.epsilon for norm in _batch_norms(model) if isinstance(norm, BatchNorm)} == {1e-3}
    assert configure_batch_norm(model, BatchNormConfig()) == len(_batch_norms(model)) - 1


def test_a_saved_model_backbone_fails_any_setting(tmp_path):
    path = str(tmp_path / "hub")
    tf.saved_model.save(_keras_backbone(), path)
    backbone = HubBackbone(path, "low_level", "high_level", output_stride=16)
    model = DeepLabV3Plus(3, backbone=backbone, aspp_filters=8, decoder_filters=8, low_level_filters=4)
    with pytest.raises(UserInputError, match=r"batch_norm.sync = True.*'hub_backbone' \(HubBackbone\)"):
        configure_batch_norm(model, BatchNormConfig(sync=True))


def test_configuring_a_built_model_fails():
    norm = batch_norm_layer("bn")
    norm(tf.ones([1, 2, 2, 3]))
    with pytest.raises(RuntimeError, match=r"expected an unbuilt model.*\['bn'\]"):
        configure_batch_norm(norm, BatchNormConfig(epsilon=1e-5))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"epsilon": 0.0}, r"batch_norm.epsilon: expected a positive number, received 0.0"),
        ({"momentum": 1.0}, r"batch_norm.momentum: expected a number in \[0, 1\) or None, received 1.0"),
        ({"momentum": -0.1}, r"batch_norm.momentum: expected a number >= 0, received -0.1"),
        ({"sync": "yes"}, r"batch_norm.sync: expected True or False, received 'yes'"),
    ],
)
def test_invalid_settings_name_the_binding(kwargs, message):
    with pytest.raises(UserInputError, match=message):
        BatchNormConfig(**kwargs)
