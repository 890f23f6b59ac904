"""The TWIST projection head and its BatchNorms (``train.ProjectionHead``, spec 4.1).

The original synchronises every BatchNorm with ``nn.SyncBatchNorm``: the backbone's and the head's hidden
BNs over all ranks, and the non-affine logit BN only inside a "bunch" group of ``bunch_size / batch_size``
consecutive ranks. ``nn.SyncBatchNorm`` runs on CUDA only, so on CPU (gloo) :class:`GroupBatchNorm` does
the same computation with autograd-aware all-reduces (:mod:`core.dist.syncbn`); ``sync_bn`` picks one or
the other.
"""
from __future__ import annotations

from typing import List

import torch
import torch.distributed as tdist
import torch.nn as nn

from core.dist.syncbn import sync_bn
from core.errors import UserError


def bunch_rank_groups(world_size: int, batch_size: int, bunch_size: int) -> List[List[int]]:
    """Consecutive rank groups of ``procs_per_bunch = bunch_size / batch_size`` ranks (``--lbn_type bn``).

    The original asserted ``bunch % batch == 0`` and ``W % procs_per_bunch == 0``. When the whole world is
    smaller than one bunch (e.g. one process with the default 128 / 256), the bunch is the whole world.
    """
    if bunch_size % batch_size != 0:
        raise UserError(f"--bunch-size {bunch_size} must be a multiple of --batch-size {batch_size}")
    ppb = bunch_size // batch_size
    if world_size < ppb:
        ppb = world_size
    if world_size % ppb != 0:
        raise UserError(f"the number of processes ({world_size}) must be divisible by bunch-size / batch-size "
                        f"= {bunch_size // batch_size}")
    ranks = list(range(world_size))
    return [ranks[i:i + ppb] for i in range(0, world_size, ppb)]


def make_bunch_group(world_size: int, rank: int, batch_size: int, bunch_size: int):
    """Create every bunch group (all ranks must call this, in the same order) and return this rank's group
    (None when the group is the whole world)."""
    groups = bunch_rank_groups(world_size, batch_size, bunch_size)
    if len(groups) == 1:
        return None
    mine = None
    for ranks in groups:
        g = tdist.new_group(ranks)
        if rank in ranks:
            mine = g
    return mine


class ProjectionHead(nn.Module):
    """Linear-Norm-Act-Dropout-Linear-Norm-Act, then ``last_linear`` to ``dim`` logits and the non-affine
    logit ``norm`` (``--lbn_type``: bn = bunch group, syncbn = all ranks, identity = none).

    ``proj_norm``: bn (BN synchronised over all ranks), ln (LayerNorm eps 1e-6), none. ``act``: relu, else
    GELU. ``trunc_init``: every Linear trunc-normal(std 0.02) with zero bias (always for ViT backbones).
    Parameter names follow the original (``projection_head.{0,1,4,5}``, ``last_linear``, ``norm``).
    """

    def __init__(self, feature_dim: int, hid_dim: int = 4096, dim: int = 4096, proj_norm: str = "bn",
                 act: str = "relu", drop: float = 0.0, lbn_type: str = "bn", bunch_group=None,
                 trunc_init: bool = False, device_type: str = "cpu"):
        super().__init__()
        if lbn_type == "bn":
            norm = sync_bn(dim, affine=False, group=bunch_group, device_type=device_type)
        elif lbn_type == "syncbn":
            norm = sync_bn(dim, affine=False, group=None, device_type=device_type)
        elif lbn_type == "identity":
            norm = nn.Identity()
        else:
            raise UserError(f"unknown --lbn_type '{lbn_type}' (choose bn, syncbn or identity)")

        def hidden_norm():
            if proj_norm == "bn":
                return sync_bn(hid_dim, affine=True, group=None, device_type=device_type)
            if proj_norm == "ln":
                return nn.LayerNorm(hid_dim, eps=1e-6)
            if proj_norm == "none":
                return nn.Identity()
            raise UserError(f"unknown --proj_norm '{proj_norm}' (choose bn, ln or none)")

        def activation():
            return nn.ReLU() if act == "relu" else nn.GELU()

        self.projection_head = nn.Sequential(
            nn.Linear(feature_dim, hid_dim, bias=True), hidden_norm(), activation(), nn.Dropout(p=drop),
            nn.Linear(hid_dim, hid_dim, bias=True), hidden_norm(), activation(),
        )
        self.last_linear = nn.Linear(hid_dim, dim, bias=True)
        self.norm = norm
        if trunc_init:
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    nn.init.trunc_normal_(m.weight, std=0.02)
                    nn.init.zeros_(m.bias)
        self.stats = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.last_linear(self.projection_head(x))
        ft = self.norm(f)
        with torch.no_grad():  # column / row std of the logits before and after the logit BN (spec 3.5)
            self.stats = {"fc_std": f.float().std(0, unbiased=False).mean(),
                          "fr_std": f.float().std(1, unbiased=False).mean(),
                          "ftc_std": ft.float().std(0, unbiased=False).mean(),
                          "ftr_std": ft.float().std(1, unbiased=False).mean()}
        return ft
