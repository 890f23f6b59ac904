"""Builders shared by ``train.py`` and the evaluation scripts: transforms, the TWIST network, the optimizer
and the per-step schedules (spec 4-6)."""
from __future__ import annotations

from typing import Dict

import numpy as np
import torch
import torch.nn as nn

from core.augment import recipes
from core.backbones import build_backbone
from core.errors import UserError
from core.optim import LARS, apply_weight_decay, cosine_scheduler, param_groups, twist_lr, twist_warmup_epochs
from core.dist import convert_sync_bn
from twist_lib.head import ProjectionHead

HARDER_GLOBAL_SCALE = (0.14, 1.0)
HARDER_LOCAL_SCALE = (0.05, 0.14)


def train_transform(aug: str, img_size: int, local_crops_number: int, global_scale, local_scale):
    """``augmentation.get_augmentations``: barlow / moco / multicrop / rand view generators."""
    return recipes.twist_views(aug, img_size, local_crops_number, tuple(global_scale), tuple(local_scale))


def harder_transform(args):
    """The switch at ``epoch == mme_epochs``: multicrop with global (0.14, 1) and local (0.05, 0.14) scales.
    L stays ``--local_crops_number``, or 0 when the run did not start with multicrop (the original had
    already forced L = 0 in the training step)."""
    n_local = args.local_crops_number if args.aug == "multicrop" else 0
    return train_transform("multicrop", args.img_size, n_local, HARDER_GLOBAL_SCALE, HARDER_LOCAL_SCALE)


def build_twist(args, device_type: str = "cpu", bunch_group=None, distributed: bool = False,
                sync_backbone: bool = True):
    """backbone (BNs synchronised over all ranks when distributed, unless ``sync_backbone`` is False: then the
    caller converts them, e.g. ``setup_run(sync_bn=True)``) + projection head (its BNs are synchronised already)."""
    from twist_lib.model import TWIST

    is_vit = args.backbone.startswith("vit")
    backbone = build_backbone(args.backbone, drop_path=args.drop_path, img_size=args.img_size,
                              patch_size=args.patch_size)
    if is_vit and args.freeze_embedding:
        for p in backbone.patch_embed.parameters():
            p.requires_grad = False
    if sync_backbone and (distributed or device_type == "cuda"):
        backbone = convert_sync_bn(backbone, None, device_type)
    head = ProjectionHead(backbone.feat_dim, args.hid_dim, args.dim, args.proj_norm, args.act, args.drop,
                          args.lbn_type, bunch_group, bool(is_vit or args.proj_trunc_init), device_type)
    return TWIST(backbone, head)


def build_optimizer(model: nn.Module, args) -> torch.optim.Optimizer:
    """Two groups (spec 5.1): weights, and biases / 1-D / pos_embed / cls_token / dist_token (weight decay 0
    with ``--exclude-bias-weight-decay 1``, excluded from LARS, lr divided by ``--lr_wbr``). lr starts at 0
    and is set every step."""
    bias_wd = 0.0 if args.exclude_bias_weight_decay else args.weight_decay
    groups = param_groups(model, args.weight_decay, exclude_bias_and_norm=True, no_decay_wd=bias_wd,
                          lars_exclude_no_decay=True, no_decay_lr_scale=1.0 / args.lr_wbr)
    if args.optim in ("lars", "lars_oss"):
        return LARS(groups, lr=0.0, momentum=0.9, weight_decay=args.weight_decay, eta=0.001, mode="openself")
    if args.optim == "sgd":
        return torch.optim.SGD(groups, lr=0.0, momentum=0.9, weight_decay=args.weight_decay)
    if args.optim == "admw":
        return torch.optim.AdamW(groups)
    raise UserError(f"unknown --optim '{args.optim}' (choose lars, lars_oss, sgd or admw)")


def schedules(args, niter: int) -> Dict[str, np.ndarray]:
    """Per-iteration weight decay (all epochs), quantile (self-labeling epochs) and teacher momentum
    (``mme_epochs``) arrays, all ``core.optim.cosine_scheduler``."""
    out = {"wd": cosine_scheduler(args.weight_decay, args.weight_decay_end, args.epochs, niter)}
    sl_epochs = args.epochs if args.crops_interact_style == "self_label" else args.epochs - args.mme_epochs
    out["quantile"] = (cosine_scheduler(args.quantile, args.quantile_end, sl_epochs, niter) if sl_epochs > 0
                       else np.zeros(0))
    out["momentum"] = cosine_scheduler(args.momentum_start, args.momentum_end, args.mme_epochs, niter) \
        if args.mme_epochs > 0 else np.zeros(0)
    return out


def finalize_args(args, world_size: int):
    """The in-place adjustments of the original ``main``: forced warm-up, mme_epochs clamp, scaled lrs."""
    args.warmup_epochs = twist_warmup_epochs(args.epochs)
    if args.mme_epochs > args.epochs:
        args.mme_epochs = args.epochs
    if args.crops_interact_style == "self_label" and args.mme_epochs != args.epochs:
        raise UserError("--crops_interact_style self_label needs --mme_epochs equal to --epochs")
    args.base_lr, args.base_lr_sl = args.lr, args.lr_sl
    args.lr = args.lr * args.batch_size * world_size / 256.0
    args.lr_sl = args.lr_sl * args.batch_size * world_size / 256.0
    if args.backbone.startswith("vit"):
        from core.augment.recipes import local_size

        sizes = [args.img_size] + ([local_size(args.img_size)] if args.aug == "multicrop" else [])
        if any(s % args.patch_size for s in sizes):
            raise UserError(f"ViT crops {sizes} px must be multiples of --patch-size {args.patch_size} "
                            f"(e.g. --img_size 224 or 112)")
    args.global_crops_scale = (args.min1, args.max1)
    args.local_crops_scale = (args.min2, args.max2)
    return args


def set_step(optimizer, args, sched: Dict[str, np.ndarray], step: int, niter: int) -> float:
    """Per-iteration lr (``utils.adjust_learning_rate``: warm-up, cosine to 0.001 until mme_epochs, second
    warm-up to lr_sl, cosine) on both groups (group 1 divided by ``--lr_wbr``) and the cosine weight decay
    on group 0 only. Returns the group-0 lr."""
    lr = twist_lr(step, niter, args.epochs, args.mme_epochs, args.lr, args.lr_sl, args.sl_warmup_epochs)
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
    apply_weight_decay(optimizer, float(sched["wd"][step]))
    return lr
