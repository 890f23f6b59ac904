"""One door for the set-up of a run, in the one order that is correct for every method.

1. the student goes to its device (channels_last on CUDA);
2. BN becomes synchronised BN (``nn.SyncBatchNorm`` on CUDA, :class:`core.dist.syncbn.GroupBatchNorm` on gloo),
   keeping the Parameter objects, so nothing built earlier is orphaned;
3. DDP wraps it, which broadcasts rank 0's parameters and buffers;
4. teachers / momentum encoders / EMA copies are built from the broadcast student and broadcast once more;
5. the optimizer is built from the final parameters.

Scripts say what they need (``sync_bn``, ``teachers``, ``make_optimizer``); the order is not their business.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Optional

import torch
import torch.nn as nn

from core import dist
from core.engine import probe


@dataclass
class Run:
    model: nn.Module                       # the inner module, on its device, BN converted
    wrapped: nn.Module                     # DDP(model) when distributed, else model
    optimizer: Optional[torch.optim.Optimizer] = None
    teachers: Dict[str, nn.Module] = field(default_factory=dict)


@torch.no_grad()
def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers into ``module`` on every rank (no-op on one process)."""
    if not (dist.is_dist() and dist.get_world_size() > 1):
        return
    for t in list(module.parameters()) + list(module.buffers()):
        torch.distributed.broadcast(t.data, src=src)


def setup_run(ctx: dist.DistContext, model: nn.Module, *,
              make_optimizer: Optional[Callable[[nn.Module], torch.optim.Optimizer]] = None,
              sync_bn: bool = False, ddp: bool = True, find_unused_parameters: bool = False,
              channels_last: bool = True,
              teachers: Optional[Dict[str, Callable[[nn.Module], nn.Module]]] = None) -> Run:
    """Set up a run (see the module docstring for the order) and return its pieces."""
    model = model.to(ctx.device)
    if ctx.device.type == "cuda" and channels_last:
        model = model.to(memory_format=torch.channels_last)
    if sync_bn:
        model = dist.convert_sync_bn(model, device_type=ctx.device.type)
    wrapped = dist.wrap_ddp(model, ctx, find_unused_parameters) if ddp else model
    if not ddp:
        broadcast_module(model)  # the same start on every rank even without a DDP wrapper
    built: Dict[str, nn.Module] = {}
    for name, factory in (teachers or {}).items():
        t = factory(model).to(ctx.device)
        if ctx.device.type == "cuda" and channels_last:
            t = t.to(memory_format=torch.channels_last)
        for p in t.parameters():
            p.requires_grad_(False)
        broadcast_module(t)
        built[name] = t
    optimizer = make_optimizer(model) if make_optimizer else None
    probe.note_teachers(built)
    return Run(model=model, wrapped=wrapped, optimizer=optimizer, teachers=built)
