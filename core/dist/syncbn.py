"""Synchronised BatchNorm on any device.

``nn.SyncBatchNorm`` refuses CPU tensors, so on gloo :class:`GroupBatchNorm` computes the same statistics
with autograd-aware all-reduces over the ranks of ``process_group`` (all ranks when None):
mean = sum_r sum_i x / N, var = sum_r sum_i (x - mean)^2 / N (biased, used to normalise); running stats
use ``momentum`` and the unbiased variance var * N / (N - 1). Gradients flow through the all-reduces, so with
DDP the parameter gradients equal those of one BN over the union of the ranks' rows. Parameter and buffer
names are ``nn.BatchNorm``'s, so state dicts are interchangeable. On one process, or in eval mode, it is
plain BatchNorm.
"""
from __future__ import annotations

import torch
import torch.distributed as tdist
import torch.nn as nn


def _group_size(group) -> int:
    if not (tdist.is_available() and tdist.is_initialized()):
        return 1
    return tdist.get_world_size(group) if group is not None else tdist.get_world_size()


def _all_reduce_sum(x: torch.Tensor, group) -> torch.Tensor:
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(x, group=group) if group is not None else all_reduce(x)


class GroupBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the rows of every rank in ``process_group`` (see module docstring), any input rank >= 2."""

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


def convert_group_bn(module: nn.Module, group=None) -> nn.Module:
    """Every ``_BatchNorm`` of ``module`` -> :class:`GroupBatchNorm` (parameters, buffers, requires_grad and
    the train/eval flag kept)."""
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GroupBatchNorm):
        out = GroupBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                             module.track_running_stats, process_group=group)
        ref = next(iter(list(module.parameters()) + list(module.buffers())), None)
        if ref is not None:  # keep the device and floating dtype of the replaced layer
            out = out.to(device=ref.device, dtype=ref.dtype if ref.is_floating_point() else None)
        if module.affine:  # the same Parameter objects: an optimizer built earlier still updates them
            out.weight, out.bias = module.weight, module.bias
        if module.track_running_stats:
            out.running_mean, out.running_var = module.running_mean, module.running_var
            out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, convert_group_bn(child, group))
    return out
