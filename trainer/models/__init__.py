"""DeepLab model family: ResNet, Xception-65, MobileNetV2, MobileNetV3, EfficientNetV2, ConvNeXt, Keras Xception and
SavedModel (TF Hub-style) backbones, ASPP, decoder, shared building blocks."""

from trainer.models.aspp import ASPP
from trainer.models.atrous import AtrousConv2D, AtrousDepthwiseConv2D
from trainer.models.batch_norm import BatchNorm, BatchNormConfig, configure_batch_norm
from trainer.models.convnext import ConvNeXt
from trainer.models.decoder import Decoder
from trainer.models.deeplab import DeepLabV3, DeepLabV3Plus
from trainer.models.efficientnet_v2 import EfficientNetV2
from trainer.models.hub_backbone import HubBackbone
from trainer.models.keras_xception import KerasXception
from trainer.models.layers import ConvBNReLU
from trainer.models.mobilenet_v2 import MobileNetV2
from trainer.models.mobilenet_v3 import MobileNetV3
from trainer.models.resnet import BottleneckBlock, ResNet
from trainer.models.separable import SeparableConvBNReLU
from trainer.models.xception import Xception65

__all__ = [
    "ASPP",
    "AtrousConv2D",
    "AtrousDepthwiseConv2D",
    "BatchNorm",
    "BatchNormConfig",
    "BottleneckBlock",
    "ConvBNReLU",
    "ConvNeXt",
    "Decoder",
    "DeepLabV3",
    "DeepLabV3Plus",
    "EfficientNetV2",
    "HubBackbone",
    "KerasXception",
    "MobileNetV2",
    "MobileNetV3",
    "ResNet",
    "SeparableConvBNReLU",
    "Xception65",
    "configure_batch_norm",
]
