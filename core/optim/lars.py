"""One LARS implementation covering the three variants the papers use.

``mode='larc'`` / ``'solo'`` (scale mode, as NVIDIA apex ``LARC`` and solo-learn ``LARS``): for each
parameter p with gradient g and group weight decay wd, if ||p|| != 0 and ||g|| != 0 (and p is not excluded)::

    ratio = eta * ||p|| / (||g|| + wd * ||p|| + eps);  with clip: ratio = min(ratio / lr, 1)
    d = (g + wd * p) * ratio

otherwise d = g (no weight decay). Then SGD with momentum: ``buf = m * buf + d`` (``buf = d`` on the first
step), ``p -= lr * buf``. apex LARC is ``eta=0.001, clip=False`` with no exclusion (``mode='larc'``); solo-learn
is ``eta=0.02, clip=True, exclude_1d=True`` (``exclude_bias_n_norm``: 1-D parameters get neither scaling
nor weight decay).

``mode='openself'`` (TWIST ``LARS_OPENSELF``)::

    local_lr = eta * ||p|| / (||g|| + wd * ||p||)     (1 for excluded parameters)
    d = (g + wd * p) * local_lr * lr;  buf = m * buf + d (buf = d first);  p -= buf

The learning rate sits *inside* the momentum buffer here. The original divides 0/0 when ||g|| = ||p|| = 0;
there ``d`` is 0 whatever local_lr is, so we take local_lr = 1 (identical wherever the original is finite).

A parameter group with ``lars_exclude=True`` skips the adaptation (TWIST's bias/norm group). Everything
stays on the device (``torch.where``), so a step costs no host synchronisation.
"""
from __future__ import annotations

import torch
from torch.optim import Optimizer

MODES = ("larc", "solo", "openself")


class LARS(Optimizer):
    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 0.001,
                 clip: bool = False, eps: float = 1e-8, exclude_1d: bool = False, mode: str = "larc"):
        if mode not in MODES:
            raise ValueError(f"LARS mode must be one of {MODES}, got {mode!r}")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, clip=clip, eps=eps,
                        exclude_1d=exclude_1d, lars_exclude=False)
        self.mode = mode
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            # groups restored from optimizers saved by other code may lack our keys: use the defaults
            opt = {k: group.get(k, v) for k, v in self.defaults.items()}
            lr, wd, m, eta, eps = opt["lr"], opt["weight_decay"], opt["momentum"], opt["eta"], opt["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                excluded = opt["lars_exclude"] or (opt["exclude_1d"] and p.ndim == 1)
                if self.mode == "openself":
                    d = self._openself_update(p, g, lr, wd, eta, excluded)
                else:
                    d = self._scaled_grad(p, g, lr, wd, eta, eps, opt["clip"], excluded)
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = d.clone()
                else:
                    buf.mul_(m).add_(d)
                if self.mode == "openself":
                    p.sub_(buf)
                else:
                    p.add_(buf, alpha=-lr)
        return loss

    @staticmethod
    def _scaled_grad(p, g, lr, wd, eta, eps, clip, excluded):
        if excluded:
            return g
        pn, gn = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
        ratio = eta * pn / (gn + wd * pn + eps)
        if clip:
            ratio = torch.clamp(ratio / lr, max=1.0)
        ok = (pn != 0) & (gn != 0)
        return torch.where(ok, (g + wd * p) * ratio, g)

    @staticmethod
    def _openself_update(p, g, lr, wd, eta, excluded):
        d = g + wd * p
        if excluded:
            return d * lr
        pn, gn = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
        denom = gn + wd * pn
        local = torch.where(denom > 0, eta * pn / torch.where(denom > 0, denom, torch.ones_like(denom)),
                            torch.ones_like(denom))
        return d * local * lr
