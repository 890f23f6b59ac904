"""SyncBN for the detection backbone on every device.

mmdet's ``norm_cfg=dict(type='SyncBN')`` normalises with statistics of the *global* batch (all ranks). On CUDA
this is ``torch.nn.SyncBatchNorm``; torch's SyncBatchNorm refuses CPU tensors once a process group is up, so on
CPU/gloo :class:`GlobalBatchNorm2d` computes the same thing: per-channel sums ``S = sum x``, ``Q = sum x^2`` and
count ``n`` all-reduced with an autograd-aware all-reduce, ``mean = S/n``, ``var = Q/n - mean^2`` (biased, used to
normalise), running stats updated with the unbiased ``var * n/(n-1)`` and ``momentum``. Backward flows through the
all-reduce, so each rank receives the gradient of every rank's loss w.r.t. its inputs, exactly as SyncBN.
On one process (or in eval mode) it is plain BatchNorm2d.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from core import dist


class GlobalBatchNorm2d(nn.BatchNorm2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_dist() and dist.get_world_size() > 1):
            return super().forward(x)
        c = x.shape[1]
        xf = x.float()
        n_local = torch.tensor([float(x.numel() // c)], dtype=torch.float32, device=x.device)
        packed = torch.cat([xf.sum(dim=(0, 2, 3)), (xf * xf).sum(dim=(0, 2, 3)), n_local])
        packed = dist.all_reduce_sum_grad(packed)
        n = packed[2 * c]
        mean = packed[:c] / n
        var = packed[c:2 * c] / n - mean * mean
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * n / (n - 1).clamp(min=1)
                self.running_mean.mul_(1 - m).add_(m * mean.detach().to(self.running_mean.dtype))
                self.running_var.mul_(1 - m).add_(m * unbiased.detach().to(self.running_var.dtype))
        inv = torch.rsqrt(var + self.eps)
        scale = inv if self.weight is None else inv * self.weight.float()
        shift = -mean * scale if self.bias is None else self.bias.float() - mean * scale
        return (xf * scale[None, :, None, None] + shift[None, :, None, None]).to(x.dtype)


def convert_sync_bn(module: nn.Module) -> nn.Module:
    """Every ``BatchNorm2d`` of ``module`` -> ``torch.nn.SyncBatchNorm`` on CUDA, :class:`GlobalBatchNorm2d`
    otherwise (weights, buffers and the train/eval flag are kept)."""
    cuda = any(p.is_cuda for p in module.parameters())
    if cuda:
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert(module)


def _convert(module: nn.Module) -> nn.Module:
    if type(module) is nn.BatchNorm2d:
        new = GlobalBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                                module.track_running_stats)
        new.load_state_dict(module.state_dict())
        for p_new, p_old in zip(new.parameters(), module.parameters()):
            p_new.requires_grad_(p_old.requires_grad)
        new.train(module.training)
        return new
    for name, child in module.named_children():
        setattr(module, name, _convert(child))
    return module
