"""ResNet trunks: torchvision ResNet-18/50, the SwAV-style width-multiplied ResNet-50 (w2/w4/w5), a
CPU-friendly ``resnet_tiny``; optional CIFAR stem (solo-learn's: 3x3 conv, stride 1, padding 2, no max-pool).

All trunks keep torchvision's parameter names (``conv1``, ``bn1``, ``layer1..4``, ``downsample.0/1``) so
checkpoints convert between them, replace ``fc`` by ``Identity`` and expose ``feat_dim``.
"""
from __future__ import annotations

from typing import Sequence, Type, Union

import torch.nn as nn
import torchvision
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet


CIFAR_STEM_PADDING = 2  # solo-learn ``solo/methods/base.py``


class ResNetTrunk(ResNet):
    """A torchvision ``ResNet`` whose stage widths are ``widths`` (64, 128, 256, 512 for the standard nets).

    The SwAV-style ResNet-50wK multiplies every width, the stem included, by K: ``widths = 64K ... 512K``
    with ``width_per_group = 64`` (inner bottleneck width = stage width), so its output dim is 2048K.
    """

    def __init__(self, block: Type[Union[BasicBlock, Bottleneck]], layers: Sequence[int],
                 widths: Sequence[int] = (64, 128, 256, 512), cifar_stem: bool = False,
                 zero_init_residual: bool = False):
        nn.Module.__init__(self)
        self._norm_layer = nn.BatchNorm2d
        self.inplanes = widths[0]
        self.dilation = 1
        self.groups = 1
        self.base_width = 64
        if cifar_stem:
            self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, stride=1, padding=CIFAR_STEM_PADDING, bias=False)
        else:
            self.conv1 = nn.Conv2d(3, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity() if cifar_stem else nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, widths[0], layers[0])
        self.layer2 = self._make_layer(block, widths[1], layers[1], stride=2)
        self.layer3 = self._make_layer(block, widths[2], layers[2], stride=2)
        self.layer4 = self._make_layer(block, widths[3], layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.feat_dim = widths[3] * block.expansion
        self.fc = nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:
            zero_init_last_bn(self)


def zero_init_last_bn(model: nn.Module) -> None:
    """Zero the last BN gamma of every residual block (``zero_init_residual=True``)."""
    for m in model.modules():
        if isinstance(m, Bottleneck) and m.bn3.weight is not None:
            nn.init.constant_(m.bn3.weight, 0)
        elif isinstance(m, BasicBlock) and m.bn2.weight is not None:
            nn.init.constant_(m.bn2.weight, 0)


def to_cifar_stem(model: ResNet, padding: int = CIFAR_STEM_PADDING) -> ResNet:
    """solo-learn's CIFAR stem on a torchvision ResNet: a new 3x3 conv1 (stride 1, padding 2, no bias, torch's
    default init, as solo-learn's ``BaseMethod``) and no max-pool."""
    model.conv1 = nn.Conv2d(3, model.conv1.out_channels, kernel_size=3, stride=1, padding=padding, bias=False)
    model.maxpool = nn.Identity()
    return model


def torchvision_resnet(name: str, *, cifar_stem: bool = False, zero_init_residual: bool = False,
                       num_classes: int = 0) -> ResNet:
    """torchvision ``resnet18/34/50/101/152`` (never pretrained weights). ``num_classes=0`` replaces ``fc``
    by ``Identity`` and sets ``feat_dim``."""
    ctor = getattr(torchvision.models, name)
    model = ctor(weights=None, zero_init_residual=zero_init_residual, num_classes=max(num_classes, 1))
    model.feat_dim = model.fc.in_features
    if num_classes == 0:
        model.fc = nn.Identity()
    if cifar_stem:
        to_cifar_stem(model)
    return model


def resnet50w(width: int, *, cifar_stem: bool = False, zero_init_residual: bool = False) -> ResNetTrunk:
    """SwAV-style ResNet-50 with every width multiplied by ``width`` (w2: ~93.9 M parameters w/o fc)."""
    w = [64 * width, 128 * width, 256 * width, 512 * width]
    return ResNetTrunk(Bottleneck, [3, 4, 6, 3], w, cifar_stem, zero_init_residual)


def resnet_tiny(*, cifar_stem: bool = True, zero_init_residual: bool = False, base: int = 16) -> ResNetTrunk:
    """A CPU-friendly ResNet: 4 stages of one BasicBlock, widths 16/32/64/128 (feat_dim 128)."""
    return ResNetTrunk(BasicBlock, [1, 1, 1, 1], [base, 2 * base, 4 * base, 8 * base], cifar_stem,
                       zero_init_residual)
