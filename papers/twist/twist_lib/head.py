"""The TWIST projection head and its BatchNorms (``train.ProjectionHead``, spec 4.1).

The original synchronises every BatchNorm with ``nn.SyncBatchNorm``: the backbone's and the head's hidden
BNs over all ranks, and the non-affine logit BN only inside a "bunch" group of ``bunch_size / batch_size``
consecutive ranks. ``nn.SyncBatchNorm`` runs on CUDA only, so on CPU (gloo) :class:`GroupBatchNorm` does
the same computation with autograd-aware all-reduces; :func:`sync_bn` picks one or the other.
"""
from __future__ import annotations

from typing import List

import torch
import torch.distributed as tdist
import torch.nn as nn

from core import dist
from core.errors import UserError


def _group_size(group) -> int:
    if not dist.is_dist():
        return 1
    return tdist.get_world_size(group) if group is not None else tdist.get_world_size()


def _all_reduce_sum(x: torch.Tensor, group) -> torch.Tensor:
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(x, group=group) if group is not None else all_reduce(x)


class GroupBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are over the rows of every rank in ``process_group`` (all ranks
    when None), like ``nn.SyncBatchNorm``, but on any device.

    mean = sum_r sum_i x / N,  var = sum_r sum_i (x - mean)^2 / N (biased, used to normalise); running
    stats use momentum and the unbiased variance N / (N - 1). Gradients flow through the all-reduces, so
    with DDP the parameter gradients equal those of one BN over the union of the ranks' rows.
    Buffers and parameters have ``nn.BatchNorm`` names, so state dicts are interchangeable.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True,
                 track_running_stats: bool = True, process_group=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.process_group = process_group

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        use_batch = self.training or not self.track_running_stats
        if not use_batch or _group_size(self.process_group) == 1:
            return super().forward(x)
        c = x.shape[1]
        dims = [0] + list(range(2, x.dim()))
        shape = [1, c] + [1] * (x.dim() - 2)
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        count = torch.full((1,), xf.numel() / c, dtype=xf.dtype, device=x.device)
        s = _all_reduce_sum(torch.cat([xf.sum(dims), count]), self.process_group)
        n = s[-1]
        mean = s[:c] / n
        xc = xf - mean.view(shape)
        var = _all_reduce_sum((xc * xc).sum(dims), self.process_group) / n
        y = xc * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(m * mean.detach())
                self.running_var.mul_(1 - m).add_(m * var.detach() * n / torch.clamp(n - 1, min=1))
        return y.to(x.dtype)


def sync_bn(num_features: int, affine: bool = True, group=None, device_type: str = "cpu") -> nn.Module:
    """``nn.SyncBatchNorm`` on CUDA, :class:`GroupBatchNorm` elsewhere (same statistics and names)."""
    if device_type == "cuda":
        return nn.SyncBatchNorm(num_features, affine=affine, process_group=group)
    return GroupBatchNorm(num_features, affine=affine, process_group=group)


def convert_sync_bn(module: nn.Module, group=None, device_type: str = "cpu") -> nn.Module:
    """``SyncBatchNorm.convert_sync_batchnorm`` that also works on CPU (every ``_BatchNorm`` becomes
    :func:`sync_bn`, parameters and buffers copied)."""
    if device_type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module, process_group=group)
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GroupBatchNorm):
        out = GroupBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                             module.track_running_stats, process_group=group)
        with torch.no_grad():
            if module.affine:
                out.weight.copy_(module.weight)
                out.bias.copy_(module.bias)
            if module.track_running_stats:
                out.running_mean.copy_(module.running_mean)
                out.running_var.copy_(module.running_var)
                out.num_batches_tracked.copy_(module.num_batches_tracked)
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, convert_sync_bn(child, group, device_type))
    return out


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
