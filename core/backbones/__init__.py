"""Backbones shared by every paper folder. :func:`build_backbone` maps a name to a feature extractor
(images -> pooled features) with attribute ``feat_dim``."""
from __future__ import annotations

import os

import torch.nn as nn

from core.backbones.resnet import (ResNetTrunk, resnet50w, resnet_tiny, to_cifar_stem,  # noqa: F401
                                   torchvision_resnet, zero_init_last_bn)
from core.backbones.vit import VIT_NAMES, build_vit  # noqa: F401
from core.errors import UserError

TORCHVISION_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
WIDE_RESNETS = {"resnet50w2": 2, "resnet50w4": 4, "resnet50w5": 5}
BACKBONES = TORCHVISION_RESNETS + tuple(WIDE_RESNETS) + ("resnet_tiny",) + tuple(VIT_NAMES)
# SSL_RESNET_STEM=cifar|imagenet forces one ResNet stem for every script of a run (core.compare sets it so that
# all methods share the stem); unset or empty = each caller's own choice
STEM_ENV = "SSL_RESNET_STEM"
STEMS = {"cifar": True, "imagenet": False}


def stem_override(cifar_stem: bool) -> bool:
    """The caller's ``cifar_stem`` unless ``$SSL_RESNET_STEM`` names a stem."""
    v = os.environ.get(STEM_ENV, "").strip().lower()
    if not v:
        return cifar_stem
    if v not in STEMS:
        raise UserError(f"{STEM_ENV}={v!r}: choose one of {', '.join(STEMS)} (or leave it unset)")
    return STEMS[v]


def build_backbone(name: str, *, cifar_stem: bool = False, zero_init_residual: bool = False,
                   drop_path: float = 0.0, img_size: int = 224, patch_size: int = 16) -> nn.Module:
    """Build a backbone by name (see ``BACKBONES``); unknown names raise a one-line UserError. The ResNet stem
    follows ``$SSL_RESNET_STEM`` when set (:func:`stem_override`)."""
    if name not in VIT_NAMES:
        cifar_stem = stem_override(cifar_stem)
    if name in TORCHVISION_RESNETS:
        return torchvision_resnet(name, cifar_stem=cifar_stem, zero_init_residual=zero_init_residual)
    if name in WIDE_RESNETS:
        return resnet50w(WIDE_RESNETS[name], cifar_stem=cifar_stem, zero_init_residual=zero_init_residual)
    if name == "resnet_tiny":
        return resnet_tiny(cifar_stem=cifar_stem, zero_init_residual=zero_init_residual)
    if name in VIT_NAMES:
        return build_vit(name, drop_path=drop_path, img_size=img_size, patch_size=patch_size)
    raise UserError(f"unknown backbone '{name}' (choose one of {', '.join(BACKBONES)})")
