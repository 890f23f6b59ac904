"""Vision Transformers through timm: ViT-T/S/B (patch 16) with drop path and position-embedding
interpolation for crops of any size (``dynamic_img_size``), classifier head removed."""
from __future__ import annotations

import torch.nn as nn

VIT_NAMES = {
    "vit_t": "vit_tiny_patch16_224",
    "vit_tiny": "vit_tiny_patch16_224",
    "vit_s": "vit_small_patch16_224",
    "vit_small": "vit_small_patch16_224",
    "vit_b": "vit_base_patch16_224",
    "vit_base": "vit_base_patch16_224",
}


def build_vit(name: str, *, drop_path: float = 0.0, img_size: int = 224, patch_size: int = 16) -> nn.Module:
    """A timm ViT returning the CLS token (``num_classes=0``), never pretrained. ``feat_dim`` is set."""
    import timm

    model = timm.create_model(VIT_NAMES[name], pretrained=False, num_classes=0, drop_path_rate=drop_path,
                              img_size=img_size, patch_size=patch_size, dynamic_img_size=True)
    model.feat_dim = model.num_features
    return model
