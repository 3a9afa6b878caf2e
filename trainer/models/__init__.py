"""DeepLabV3+ model family: ResNet backbone, ASPP, decoder and the shared conv/BN building blocks."""

from trainer.models.aspp import ASPP
from trainer.models.decoder import Decoder
from trainer.models.deeplab import DeepLabV3, DeepLabV3Plus
from trainer.models.layers import ConvBNReLU, batch_norm
from trainer.models.resnet import BottleneckBlock, ResNet
from trainer.models.separable import SeparableConvBNReLU

__all__ = [
    "ASPP",
    "BottleneckBlock",
    "ConvBNReLU",
    "Decoder",
    "DeepLabV3",
    "DeepLabV3Plus",
    "ResNet",
    "SeparableConvBNReLU",
    "batch_norm",
]
