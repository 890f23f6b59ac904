"""One frozen-feature protocol for every backbone of the comparison.

* weighted kNN top-1, k = 20 and 200, T = 0.07 (:func:`core.eval.knn_accuracy`): memory = the train split,
  queries = the val split, both with the evaluation transform, L2-normalised features;
* linear probe (:func:`core.eval.linear_probe_features`) on the same cached features;
* collapse diagnostics (:func:`core.eval.collapse_metrics`: effective rank, std of normalised features,
  alignment, uniformity) of the backbone features of two augmented views (MoCo v2 augmentation, fixed
  seed) of the val images.

Baselines: the same backbone at random init (same stem), and raw pixels (the normalised image as the feature).
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.transforms import v2 as T

from core.augment import IMAGENET_MEAN, IMAGENET_STD, MultiView, eval_transform, moco_v2, to_tensor_normalize
from core.backbones import build_backbone
from core.data import build_dataset, build_loader, is_builtin, is_synthetic
from core.eval import collapse_metrics, extract_features, knn_accuracy, linear_probe_features, load_backbone_weights

KNN_KS = (20, 200)
KNN_T = 0.07
DIAG_IMAGES = 512  # val images whose two augmented views give the collapse diagnostics


def eval_tf(data: str, size: int):
    """Built-in sets are rendered at ``size``: tensor + normalise only; real data: Resize + CenterCrop."""
    if is_builtin(data):
        return T.Compose(to_tensor_normalize(IMAGENET_MEAN, IMAGENET_STD))
    return eval_transform(size)


class Pixels(nn.Module):
    """The raw-pixel baseline: the normalised image, flattened."""

    def forward(self, x):
        return x.flatten(1)


def make_backbone(name: str, stem: str, seed: int, checkpoint: str = "", prefix: str = "",
                  zero_init: bool = False) -> nn.Module:
    """``name`` with the given stem, at random init drawn from ``seed`` (``zero_init``: last BN of every
    residual block zeroed), or loaded from ``checkpoint``."""
    torch.manual_seed(seed)
    net = build_backbone(name, cifar_stem=stem == "cifar", zero_init_residual=zero_init)
    if checkpoint:
        load_backbone_weights(net, checkpoint, prefix=prefix)
    return net


def datasets(data: str, size: int, num_train: int, seed: int = 0, num_val: int = 1000):
    """(train, val, views): the memory and query sets with the evaluation transform, and two MoCo v2 views of
    the first ``DIAG_IMAGES`` val images drawn once from ``seed`` (the same views for every row)."""
    syn = is_synthetic(data)
    tf = eval_tf(data, size)
    train = build_dataset(data, "train", tf, image_size=size, num_samples=num_train if syn else None)
    val = build_dataset(data, "val", tf, image_size=size, num_samples=num_val if syn else None)
    pairs = build_dataset(data, "val", MultiView([moco_v2(size)] * 2), image_size=size,
                          num_samples=num_val if syn else None)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    views = [pairs[i][0] for i in range(min(DIAG_IMAGES, len(pairs)))]
    torch.random.set_rng_state(state)
    return train, val, (torch.stack([v[0] for v in views]), torch.stack([v[1] for v in views]))


@torch.no_grad()
def view_features(model: nn.Module, views, device, batch: int = 256) -> Tuple[torch.Tensor, ...]:
    model.eval()
    return tuple(torch.cat([model(x[i:i + batch].to(device)).float() for i in range(0, len(x), batch)])
                 for x in views)


def evaluate(model: nn.Module, data: str, size: int, num_train: int, device="cpu", seed: int = 0,
             batch: int = 256, sets=None) -> Dict[str, float]:
    """kNN@20, kNN@200, linear probe (%), and the collapse diagnostics of ``model``'s features."""
    train, val, views = sets or datasets(data, size, num_train)
    model = model.to(device)
    tl = build_loader(train, batch, shuffle=False, drop_last=False, num_workers=0)
    vl = build_loader(val, batch, shuffle=False, drop_last=False, num_workers=0)
    raw_tf, ty = extract_features(model, tl, device, normalize=False)
    raw_qf, qy = extract_features(model, vl, device, normalize=False)
    tf, qf = F.normalize(raw_tf, dim=1), F.normalize(raw_qf, dim=1)
    c = len(train.classes)
    out = {f"knn{k}": knn_accuracy(tf, ty, qf, qy, c, k=k, t=KNN_T)["top1"] for k in KNN_KS}
    out["linear"] = linear_probe_features(raw_tf, ty, raw_qf, qy, c, seed=seed)
    z1, z2 = view_features(model, views, device, batch)
    out.update(collapse_metrics(z1, z2))
    return out
