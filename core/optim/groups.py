"""Parameter groups: weight-decay / LARS exclusions and fixed-lr groups."""
from __future__ import annotations

from typing import Dict, Iterable, List, Sequence

import torch.nn as nn

NO_DECAY_NAMES = ("pos_embed", "cls_token", "dist_token")


def is_bias_or_norm(name: str, p) -> bool:
    """TWIST / DINO rule: 1-D tensors (biases, BN/LN affine) and names ending in ``.bias``."""
    return p.ndim <= 1 or name.endswith(".bias")


def param_groups(model: nn.Module, weight_decay: float, *, exclude_bias_and_norm: bool = True,
                 extra_exclude: Sequence[str] = NO_DECAY_NAMES, no_decay_wd: float = 0.0,
                 lars_exclude_no_decay: bool = True, fixed_lr: Sequence[str] = (),
                 no_decay_lr_scale: float = 1.0) -> List[Dict]:
    """Split trainable parameters into groups.

    * ``fixed_lr``: names starting with one of these prefixes go to a group with ``fix_lr=True``
      (SimSiam ``--fix-pred-lr``: the predictor keeps the initial lr), same weight decay;
    * with ``exclude_bias_and_norm``: 1-D / ``.bias`` / ``pos_embed`` / ``cls_token`` / ``dist_token``
      parameters go to a group with ``weight_decay=no_decay_wd`` and ``lars_exclude`` and ``lr_scale``;
    * everything else: ``weight_decay``.

    Empty groups are dropped. Each group carries a ``name``.
    """
    decay, no_decay, fixed = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if any(name.startswith(f) for f in fixed_lr):
            fixed.append(p)
        elif exclude_bias_and_norm and (is_bias_or_norm(name, p) or any(x in name for x in extra_exclude)):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [dict(name="decay", params=decay, weight_decay=weight_decay),
              dict(name="no_decay", params=no_decay, weight_decay=no_decay_wd,
                   lars_exclude=lars_exclude_no_decay, lr_scale=no_decay_lr_scale),
              dict(name="fixed_lr", params=fixed, weight_decay=weight_decay, fix_lr=True)]
    return [g for g in groups if g["params"]]


def apply_lr(optimizer, lr: float, init_lr: float = None) -> None:
    """Set every group's lr: ``lr * group['lr_scale']``, or ``init_lr`` for groups with ``fix_lr``
    (SimSiam's ``adjust_learning_rate``)."""
    for g in optimizer.param_groups:
        if g.get("fix_lr", False):
            g["lr"] = init_lr if init_lr is not None else g.get("initial_lr", g["lr"])
        else:
            g["lr"] = lr * g.get("lr_scale", 1.0)


def apply_weight_decay(optimizer, wd: float, group_names: Iterable[str] = ("decay",)) -> None:
    """Set the weight decay of the named groups (TWIST's cosine weight-decay schedule touches group 0 only)."""
    names = set(group_names)
    for i, g in enumerate(optimizer.param_groups):
        if g.get("name", "decay" if i == 0 else "") in names:
            g["weight_decay"] = wd
