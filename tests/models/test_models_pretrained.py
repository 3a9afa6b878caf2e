"""Tests for trainer/models/pretrained.py: keras.applications .h5 loading and partial checkpoint restores."""

import h5py
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from trainer.common.errors import UserInputError
from trainer.models import DeepLabV3Plus, ResNet
from trainer.models.pretrained import LoadReport, load_keras_applications_h5, restore_from_checkpoint

SIZE = 64
TINY_HEAD = {"aspp_filters": 16, "decoder_filters": 16, "low_level_filters": 8}


def _randomize(layers, seed: int) -> None:
    """Gives every weight (biases and BN statistics included) a distinct non-default value."""
    rng = np.random.default_rng(seed)
    for layer in layers:
        values = []
        for weight in layer.weights:
            shape = tuple(weight.shape)
            if "moving_variance" in weight.name or "gamma" in weight.name:
                values.append(rng.uniform(0.5, 1.5, shape).astype(np.float32))
            elif "kernel" in weight.name:
                fan_in = np.prod(shape[:-1])
                values.append((rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32))
            else:
                values.append((0.1 * rng.standard_normal(shape)).astype(np.float32))
        layer.set_weights(values)


@pytest.fixture(scope="module")
def keras_resnet50():
    model = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3))
    _randomize(model.layers, seed=0)
    return model


@pytest.fixture(scope="module")
def weights_file(keras_resnet50, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("h5") / "resnet50.h5")
    keras_resnet50.save_weights(path)
    return path


def _built_resnet(**kwargs) -> ResNet:
    backbone = ResNet(output_stride=32, **kwargs)
    backbone(tf.zeros([1, SIZE, SIZE, 3]), training=False)
    return backbone


def test_h5_weights_load_exactly_and_reproduce_keras_outputs(keras_resnet50, weights_file):
    backbone = _built_resnet()
    report = load_keras_applications_h5(backbone, weights_file)

    mapped = backbone.keras_application_layers()
    assert isinstance(report, LoadReport)
    assert report.missing_in_file == () and report.unused_in_file == ()
    assert set(report.matched) == set(mapped) and len(mapped) == 106
    assert report.num_weights_loaded == len(keras_resnet50.weights) == 53 * 2 + 53 * 4
    for name, layer in mapped.items():
        for ours, theirs in zip(layer.get_weights(), keras_resnet50.get_layer(name).get_weights(), strict=True):
            np.testing.assert_array_equal(ours, theirs, err_msg=name)

    images = tf.random.stateless_uniform([2, SIZE, SIZE, 3], seed=(1, 2), minval=-1.0, maxval=1.0)
    expected = keras_resnet50(images, training=False).numpy()
    actual = backbone(images, training=False)["high_level"].numpy()
    assert actual.shape == expected.shape == (2, 2, 2, 2048)
    assert np.abs(expected).max() > 0.1  # the comparison below is not between two near-zero tensors
    np.testing.assert_allclose(actual, expected, atol=1e-4)


@pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")
def test_full_model_h5_loads_and_beta_stem_is_refused(keras_resnet50, tmp_path):
    path = str(tmp_path / "full_model.h5")
    keras_resnet50.save(path)  # legacy full-model format: weights under the `model_weights` group
    with h5py.File(path, "r") as h5:
        assert "model_weights" in h5 and "layer_names" not in h5.attrs
    backbone = _built_resnet()
    report = load_keras_applications_h5(backbone, path)
    assert len(report.matched) == 106 and report.missing_in_file == report.unused_in_file == ()
    np.testing.assert_array_equal(
        backbone.stages[3][2].conv3.bn.moving_mean.numpy(),
        keras_resnet50.get_layer("conv5_block3_3_bn").moving_mean.numpy(),
    )

    beta = _built_resnet(stem="beta")
    assert "conv1_conv" not in beta.keras_application_layers()
    # The beta stem ends in 128 channels, so stage 1's first convs cannot take keras' 64-channel kernels.
    with pytest.raises(UserInputError, match=r"conv2_block1_0_conv.*\(1, 1, 128, 256\).*\(1, 1, 64, 256\)"):
        load_keras_applications_h5(beta, path)


def test_h5_wrong_shape_names_the_layer(keras_resnet50, tmp_path):
    path = str(tmp_path / "wrong.h5")
    keras_resnet50.save_weights(path)
    with h5py.File(path, "r+") as h5:
        group = h5["conv3_block2_2_conv"]
        weight_name = "conv3_block2_2_conv/kernel:0"  # keras saves `<layer>/<weight>:0`, kernel first
        del group[weight_name]
        group.create_dataset(weight_name, data=np.zeros([3, 3, 128, 64], np.float32))
    backbone = _built_resnet()
    before = backbone.stem_conv.conv.kernel.numpy()
    with pytest.raises(UserInputError, match=r"conv3_block2_2_conv.*wrong\.h5.*\(3, 3, 128, 128\).*\(3, 3, 128, 64\)"):
        load_keras_applications_h5(backbone, path)
    np.testing.assert_array_equal(backbone.stem_conv.conv.kernel.numpy(), before)  # nothing assigned


def test_h5_trivial_match_missing_file_and_unsupported_backbone(keras_resnet50, tmp_path):
    path = str(tmp_path / "near_empty.h5")
    layer = keras_resnet50.get_layer("conv1_conv")
    with h5py.File(path, "w") as h5:
        h5.attrs["layer_names"] = [b"conv1_conv"]
        group = h5.create_group("conv1_conv")
        group.attrs["weight_names"] = [w.name.encode() for w in layer.weights]
        for weight in layer.weights:
            group.create_dataset(weight.name, data=weight.numpy())
    backbone = _built_resnet()
    with pytest.raises(UserInputError, match=r"expected at least 90% of the 106 layers .*near_empty\.h5.*received 1"):
        load_keras_applications_h5(backbone, path)
    assert load_keras_applications_h5(backbone, path, min_matched_fraction=0.005).matched == ("conv1_conv",)

    with pytest.raises(UserInputError, match=r"no_such\.h5"):
        load_keras_applications_h5(backbone, str(tmp_path / "no_such.h5"))
    not_h5 = tmp_path / "text.h5"
    not_h5.write_text("not hdf5")
    with pytest.raises(UserInputError, match=r"cannot read .*text\.h5"):
        load_keras_applications_h5(backbone, str(not_h5))
    with pytest.raises(UserInputError, match=r"keras_application_layers.*ResNet, MobileNetV2.*received Sequential"):
        load_keras_applications_h5(keras.Sequential([keras.layers.Dense(2)]), path)
    with pytest.raises(UserInputError, match=r"expected a built backbone"):
        load_keras_applications_h5(ResNet(), path)


def _tiny_deeplab(num_classes: int) -> DeepLabV3Plus:
    model = DeepLabV3Plus(num_classes, backbone=ResNet(block_depths=(1, 1, 1, 1), base_filters=8), **TINY_HEAD)
    model(tf.zeros([1, 32, 32, 3]), training=False)
    return model


def _values(layer) -> list[np.ndarray]:
    return [w.numpy() for w in layer.weights]


def _assert_equal(layer_a, layer_b) -> None:
    for a, b in zip(_values(layer_a), _values(layer_b), strict=True):
        np.testing.assert_array_equal(a, b)


def _differs(layer_a, layer_b) -> bool:
    return any(not np.array_equal(a, b) for a, b in zip(_values(layer_a), _values(layer_b), strict=True))


@pytest.fixture
def saved_21_class_model(tmp_path):
    model = _tiny_deeplab(21)
    _randomize([layer for layer in model.submodules if isinstance(layer, keras.layers.Layer)], seed=3)
    directory = tmp_path / "run"
    tf.train.Checkpoint(model=model, global_step=tf.Variable(7, dtype=tf.int64)).save(str(directory / "ckpt"))
    return model, str(directory)


def test_checkpoint_all_parts_with_another_number_of_classes(saved_21_class_model):
    source, directory = saved_21_class_model
    model = _tiny_deeplab(5)
    fresh_classifier = _values(model.classifier)
    restored = restore_from_checkpoint(model, directory, parts="all")  # a directory → its latest checkpoint
    assert restored == ("backbone", "aspp", "decoder")
    for part in restored:
        _assert_equal(getattr(model, part), getattr(source, part))
    assert model.classifier.kernel.shape == (1, 1, 16, 5)
    for fresh, now in zip(fresh_classifier, _values(model.classifier), strict=True):
        np.testing.assert_array_equal(fresh, now)

    same_classes = _tiny_deeplab(21)
    restored = restore_from_checkpoint(same_classes, tf.train.latest_checkpoint(directory), parts="all")
    assert restored == ("backbone", "aspp", "decoder", "classifier")
    _assert_equal(same_classes.classifier, source.classifier)


def test_checkpoint_backbone_only(saved_21_class_model):
    source, directory = saved_21_class_model
    model = _tiny_deeplab(5)
    assert restore_from_checkpoint(model, directory) == ("backbone",)
    _assert_equal(model.backbone, source.backbone)
    assert _differs(model.aspp, source.aspp) and _differs(model.decoder, source.decoder)

    assert restore_from_checkpoint(model, directory, parts="backbone+aspp") == ("backbone", "aspp")
    _assert_equal(model.aspp, source.aspp)
    assert _differs(model.decoder, source.decoder)


def test_checkpoint_errors_are_loud(saved_21_class_model, tmp_path):
    _, directory = saved_21_class_model
    model = _tiny_deeplab(5)
    with pytest.raises(UserInputError, match=r"expected `parts` in \('backbone', 'backbone\+aspp', 'all'\)"):
        restore_from_checkpoint(model, directory, parts="head")
    with pytest.raises(UserInputError, match=r"restore_from_checkpoint: expected a checkpoint in .*, received none"):
        restore_from_checkpoint(model, str(tmp_path))
    with pytest.raises(UserInputError, match=r"expected a checkpoint prefix"):
        restore_from_checkpoint(model, str(tmp_path / "ckpt-9"))
    with pytest.raises(UserInputError, match=r"expected a built model"):
        restore_from_checkpoint(DeepLabV3Plus(5, backbone=ResNet(block_depths=(1, 1, 1, 1), base_filters=8)), directory)

    wider = DeepLabV3Plus(5, backbone=ResNet(block_depths=(1, 1, 1, 1), base_filters=16), **TINY_HEAD)
    wider(tf.zeros([1, 32, 32, 3]))
    with pytest.raises(UserInputError, match=r"restore_from_checkpoint: checkpoint .* does not match the model"):
        restore_from_checkpoint(wider, directory)

    other_root = tmp_path / "other"
    tf.train.Checkpoint(network=_tiny_deeplab(5)).save(str(other_root / "ckpt"))
    with pytest.raises(UserInputError, match=r"restore_from_checkpoint: checkpoint .* does not match the model"):
        restore_from_checkpoint(model, str(other_root))


def test_mobilenet_v2_h5_weights_load_through_the_same_loader(tmp_path):
    from trainer.models import MobileNetV2

    source = keras.applications.MobileNetV2(include_top=False, weights=None, alpha=0.35, input_shape=(64, 64, 3))
    path = str(tmp_path / "mobilenet_v2_0.35_no_top.h5")
    source.save_weights(path)
    backbone = MobileNetV2(output_stride=32, width_multiplier=0.35)
    backbone(tf.zeros([1, 64, 64, 3]))
    report = load_keras_applications_h5(backbone, path)
    assert not report.missing_in_file and len(report.matched) == len(backbone.keras_application_layers())
    for name, layer in backbone.keras_application_layers().items():
        for ours, theirs in zip(layer.get_weights(), source.get_layer(name).get_weights(), strict=True):
            np.testing.assert_array_equal(ours, theirs)
