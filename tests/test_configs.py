"""The recipe configs parse, build the published architectures, and pin their parameter counts (21 classes)."""

import pytest
import tensorflow as tf

from tests.helpers import REPO_ROOT
from trainer.core.config import parse_gin
from trainer.models import DeepLabV3, DeepLabV3Plus, MobileNetV2, ResNet, Xception65
from trainer.tools.model_stats import build_configured_model

pytestmark = pytest.mark.usefixtures("clear_gin")

# Measured once with build_configured_model(21) on a 65x65 input; a change here is an architecture change.
RECIPES = {
    "pascal_voc_resnet101_os16.gin": (DeepLabV3Plus, ResNet, 59_506_517),
    "pascal_voc_xception65_os16.gin": (DeepLabV3Plus, Xception65, 41_258_213),
    "mobilenetv2_os16.gin": (DeepLabV3, MobileNetV2, 2_604_565),
}


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_builds_the_published_architecture(recipe):
    model_class, backbone_class, parameters = RECIPES[recipe]
    parse_gin([f"{REPO_ROOT}/configs/{recipe}"], [])
    model = build_configured_model(num_classes=21)
    model(tf.zeros([1, 65, 65, 3]), training=False)
    assert type(model) is model_class and type(model.backbone) is backbone_class
    assert model.backbone.output_stride == 16 and model.aspp.atrous_rates == (6, 12, 18)
    assert model.count_params() == parameters


def test_cityscapes_recipe_is_the_voc_architecture_with_19_classes():
    parse_gin([f"{REPO_ROOT}/configs/cityscapes_resnet101_os16.gin"], [])
    model = build_configured_model(num_classes=19)
    model(tf.zeros([1, 65, 65, 3]), training=False)
    # Same network as the VOC recipe but for the classifier: 2 fewer classes of 256 weights + bias.
    assert model.count_params() == RECIPES["pascal_voc_resnet101_os16.gin"][2] - 2 * 257
    assert model.aspp.pool_size == (49, 49)


def test_resnet50_deeplab_v3_plus_parameter_count_at_21_classes():
    model = DeepLabV3Plus(21, backbone=ResNet(output_stride=16))
    model(tf.zeros([1, 65, 65, 3]), training=False)
    # 23,587,712 in the backbone (= keras.applications.ResNet50 without top) plus the ASPP, decoder, classifier.
    assert model.count_params() == 40_436_053
