"""Optimizer and per-group lr schedule of solo-learn's ``BaseMethod.configure_optimizers`` (spec §4c)."""
import torch

from core.optim import LARS, step_lr, warmup_cosine

AMP = {"16": "fp16", "16-mixed": "fp16", "bf16": "bf16", "bf16-mixed": "bf16", "32": "off"}


def build_optimizer(cfg, groups):
    """solo ``configure_optimizers``: SGD / LARS with momentum 0.9, Adam(W)."""
    lr, wd = cfg["lr_scaled"], cfg["weight_decay"]
    if cfg["optimizer"] == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, weight_decay=wd)
    if cfg["optimizer"] == "lars":
        return LARS(groups, lr=lr, momentum=0.9, weight_decay=wd, eta=cfg["eta_lars"],
                    clip=cfg["grad_clip_lars"], exclude_1d=cfg["exclude_bias_n_norm"], mode="solo")
    if cfg["optimizer"] == "adam":
        return torch.optim.Adam(groups, lr=lr, weight_decay=wd)
    return torch.optim.AdamW(groups, lr=lr, weight_decay=wd)


def group_lr(cfg, base: float, step: int, total: int, steps_per_epoch: int) -> float:
    """lr of a group with initial lr ``base`` at optimizer step ``step`` (solo's schedulers)."""
    sched, epoch = cfg["scheduler"], step // steps_per_epoch
    if sched == "warmup_cosine":  # pl_bolts LinearWarmupCosineAnnealingLR, stepped every step
        return warmup_cosine(step, total, cfg["warmup_epochs"] * steps_per_epoch, base,
                             cfg["warmup_start_lr"], cfg["min_lr"])
    if sched == "step":
        return step_lr(base, epoch, cfg["lr_decay_steps"], 0.1)
    return base
