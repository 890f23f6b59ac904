"""Network constructors: ``-a ARCH`` as in the original (any lowercase callable of ``torchvision.models``), plus
the CPU-friendly trunks of :mod:`core.backbones` (``resnet_tiny``, ``resnet50w2/4/5``) with an ``fc`` layer."""
from __future__ import annotations

import functools

import torch.nn as nn
import torchvision.models as tvm

from core.backbones import build_backbone
from core.errors import UserError

TORCHVISION_NAMES = sorted(name for name in tvm.__dict__
                           if name.islower() and not name.startswith("__") and callable(tvm.__dict__[name]))
CORE_NAMES = ["resnet_tiny", "resnet50w2", "resnet50w4", "resnet50w5"]
MODEL_NAMES = sorted(set(TORCHVISION_NAMES) | set(CORE_NAMES))


def _core_net(arch: str, num_classes: int = 1000) -> nn.Module:
    net = build_backbone(arch)
    net.fc = nn.Linear(net.feat_dim, num_classes)
    return net


def _torchvision_net(arch: str, num_classes: int = 1000) -> nn.Module:
    return tvm.__dict__[arch](num_classes=num_classes)


def net_constructor(arch: str):
    """``base_encoder`` of the original: a callable ``(num_classes=...) -> nn.Module`` (never pretrained)."""
    if arch in CORE_NAMES:
        return functools.partial(_core_net, arch)
    if arch in TORCHVISION_NAMES:
        return functools.partial(_torchvision_net, arch)
    raise UserError(f"unknown architecture '{arch}' (choose one of: {', '.join(MODEL_NAMES)})")


def check_has_fc(arch: str) -> None:
    """The MLP head and main_lincls need a network whose classifier is ``fc`` (ResNet family)."""
    net = net_constructor(arch)(num_classes=2)
    if not isinstance(getattr(net, "fc", None), nn.Linear):
        raise UserError(f"architecture '{arch}' has no 'fc' layer; use a ResNet (e.g. resnet50, resnet_tiny)")
