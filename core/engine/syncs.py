"""Count host reads of tensor values (each one a device->host synchronisation on CUDA), on any device.

    with count_host_syncs() as c:
        loss, logs = model(batch); loss.backward()
    assert c.count == 0, c.where

Counted: ``.item()``, ``bool()`` / ``float()`` / ``int()`` of a tensor, ``.tolist()``, ``.numpy()``, ``.cpu()``
(and ``.to("cpu")``), ``torch.nonzero``, ``masked_select`` and boolean-mask indexing (their output size depends
on the values). Linear algebra a method needs (an SVD) is not a host read and is not counted.
``count_host_syncs(exclude=("/torchvision/",))`` counts the reads made in those files apart (``excluded``).
"""
from __future__ import annotations

import traceback
from typing import List, Sequence

import torch
from torch.overrides import TorchFunctionMode

_READS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.__bool__,
          torch.Tensor.__float__, torch.Tensor.__int__, torch.Tensor.__index__, torch.Tensor.cpu,
          torch.nonzero, torch.Tensor.nonzero, torch.masked_select, torch.Tensor.masked_select,
          torch.argwhere, torch.Tensor.argwhere}


def _is_bool_index(idx) -> bool:
    items = idx if isinstance(idx, tuple) else (idx,)
    return any(torch.is_tensor(i) and i.dtype == torch.bool for i in items)


def _to_cpu(args, kwargs) -> bool:
    for a in list(args[1:]) + list(kwargs.values()):
        if isinstance(a, torch.device) and a.type == "cpu":
            return True
        if isinstance(a, str) and a.startswith("cpu"):
            return True
    return False


class count_host_syncs(TorchFunctionMode):
    """Context manager: ``count`` host reads inside it, ``where`` the first few call sites."""

    def __init__(self, exclude: Sequence[str] = ()):
        super().__init__()
        self.count = 0
        self.where: List[str] = []
        self.exclude = tuple(exclude)  # e.g. ("/torchvision/",): reads made in those files go to ``excluded``
        self.excluded = 0

    def _hit(self, name: str) -> None:
        if len(self.where) < 8 or self.exclude:
            frame = [f for f in traceback.extract_stack()
                     if "/torch/" not in f.filename and not f.filename.endswith("syncs.py")]
            site = f"{frame[-1].filename}:{frame[-1].lineno}" if frame else "?"
            if any(x in site for x in self.exclude):
                self.excluded += 1
                return
            if len(self.where) < 8:
                self.where.append(f"{name} at {site}")
        self.count += 1

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        src = args[0] if args else None
        if torch.is_tensor(src) and src.device.type != "meta":
            if func in _READS:
                self._hit(getattr(func, "__name__", str(func)))
            elif func is torch.Tensor.__getitem__ and len(args) > 1 and _is_bool_index(args[1]):
                self._hit("boolean indexing")
            elif func is torch.Tensor.to and _to_cpu(args, kwargs) and src.device.type != "cpu":
                self._hit("to(cpu)")
        return func(*args, **kwargs)
