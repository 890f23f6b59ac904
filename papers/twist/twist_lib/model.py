"""The TWIST network (backbone + :class:`~twist_lib.head.ProjectionHead`) and the training step of every
stage (``engine.train_one_epoch``): plain multi-crop TWIST, the momentum-teacher variant and the
self-labeling stage. Schedules are set from outside (``train.py`` hooks) through :class:`TwistMethod`.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from core import dist
from twist_lib import loss as L


def _full(x: torch.Tensor) -> torch.Tensor:
    """Losses in at least float32 (AMP logits are half precision)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class TWIST(nn.Module):
    """``train.TWIST``: crops of equal resolution go through the backbone together (one call for the global
    crops, one for the local crops), the head runs once on all (2 + L) B features, so the head's BNs and
    the logit BN see global and local crops jointly. ``logits(crops)`` returns the (n B) x C logits.

    ``forward(images)`` returns logits; with a :class:`TwistMethod` attached (``attach``) ``forward(batch)``
    is the training step returning ``(loss, logs)`` for :func:`core.engine.train`.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.projection_heads = head
        self._method: Optional["TwistMethod"] = None

    def attach(self, method: "TwistMethod") -> "TWIST":
        object.__setattr__(self, "_method", method)
        return self

    def features(self, crops) -> torch.Tensor:
        if torch.is_tensor(crops):
            crops = [crops]
        out, start = [], 0
        while start < len(crops):
            end = start
            while end < len(crops) and crops[end].shape[-1] == crops[start].shape[-1]:
                end += 1
            out.append(self.backbone(torch.cat(list(crops[start:end]))))
            start = end
        return torch.cat(out)

    def logits(self, crops) -> torch.Tensor:
        return self.projection_heads(self.features(crops))

    def forward(self, batch):
        if self._method is None or torch.is_tensor(batch):
            return self.logits(batch)
        return self._method.step(self, batch)


class TwistMethod:
    """Loss of one training step, in the stage given by ``epoch`` (set by the ``before_step`` hook).

    * ``epoch < mme_epochs`` with ``crops_interact_style='sparse'``: TWIST loss over the gathered global
      batch, :func:`~twist_lib.loss.twist_multicrop_loss` or, with a teacher,
      :func:`~twist_lib.loss.twist_teacher_loss`;
    * ``epoch >= mme_epochs`` (or style ``self_label``): :func:`~twist_lib.loss.self_label_loss` on the local
      batch with the current ``quantile``.
    """

    def __init__(self, *, lam1: float = 0.0, lam2: float = 1.0, tau: float = 1.0, eps: float = 1e-5,
                 mme_epochs: int = 800, style: str = "sparse", multicrop: bool = True, threshold: float = 0.0,
                 teacher: Optional[TWIST] = None, watch: bool = True):
        self.lam1, self.lam2, self.tau, self.eps = lam1, lam2, tau, eps
        self.mme_epochs, self.style, self.multicrop = mme_epochs, style, multicrop
        self.threshold = threshold
        self.teacher = teacher
        self.epoch = 0
        self.quantile = 0.0
        self.watch = watch
        self.extra_logs: Dict[str, float] = {}  # lr / wd of both groups, set by the schedule hook
        self.preds: List[torch.Tensor] = []
        self.labels: List[torch.Tensor] = []

    def self_labeling(self) -> bool:
        return self.style == "self_label" or (self.style == "sparse" and self.epoch >= self.mme_epochs)

    def step(self, net: TWIST, batch):
        crops, labels = batch[0], batch[1]
        if torch.is_tensor(crops):
            crops = [crops]
        if not self.multicrop:  # the original forces local_crops_number = 0 unless aug == multicrop
            crops = list(crops[:2])
        n = len(crops)
        feats = _full(net.logits(crops))
        views = list(feats.chunk(n))
        if n > 1:  # the two global views' logits of the last step, for the epoch's collapse diagnostics
            self.last_views = (views[0].detach(), views[1].detach())
        logs: Dict[str, torch.Tensor] = dict(net.projection_heads.stats) if hasattr(
            net.projection_heads, "stats") else {}

        teacher_views = None
        if self.teacher is not None:
            with torch.no_grad():
                teacher_views = list(_full(self.teacher.logits(crops[:2])).chunk(2))

        if self.self_labeling():
            out = L.self_label_loss(views, self.quantile, self.threshold, teacher_views, self.tau)
            with torch.no_grad():  # logged only: sharpness / diversity of the two global views
                g = [F.softmax(dist.concat_all_gather(v) / self.tau, dim=-1) for v in views[:2]]
                out["eh"] = 0.5 * (L.mean_entropy(g[0], self.eps) + L.mean_entropy(g[1], self.eps))
                out["he"] = 0.5 * (L.entropy_of_mean(g[0], self.eps) + L.entropy_of_mean(g[1], self.eps))
        elif self.style == "sparse":
            gviews = [dist.all_gather_grad(v) for v in views]
            if teacher_views is not None:
                gteach = [dist.concat_all_gather(t) for t in teacher_views]
                out = L.twist_teacher_loss(gteach, gviews, self.lam1, self.lam2, self.tau, self.eps)
            else:
                out = L.twist_multicrop_loss(gviews, self.lam1, self.lam2, self.tau, self.eps)
        else:
            from core.errors import UserError

            raise UserError(f"unknown --crops_interact_style '{self.style}' (choose sparse or self_label)")

        with torch.no_grad():
            pred1 = dist.concat_all_gather(views[0].argmax(dim=1))
            pred2 = dist.concat_all_gather(views[1].argmax(dim=1)) if n > 1 else pred1
            logs["acc"] = (pred1 == pred2).float().mean()
            if self.watch:
                self.preds.append(pred1)
                self.labels.append(dist.concat_all_gather(labels.long()))
        logs.update(self.extra_logs)  # python floats: the engine keeps them on the host (no tensor per step)
        loss = out.pop("final")
        logs.update({k: v.detach() if torch.is_tensor(v) else float(v) for k, v in out.items()})
        return loss, logs

    def pop_predictions(self):
        """Training-set predictions (argmax of view 0) and labels collected since the last call."""
        if not self.preds:
            return None, None
        p = torch.cat(self.preds).cpu().numpy()
        y = torch.cat(self.labels).cpu().numpy()
        self.preds, self.labels = [], []
        return p, y


@torch.no_grad()
def ema_update(student: nn.Module, teacher: nn.Module, m: float) -> None:
    """theta_t <- m theta_t + (1 - m) theta_s for every parameter pair (buffers are not averaged)."""
    for ps, pt in zip(student.parameters(), teacher.parameters()):
        pt.mul_(m).add_(ps.detach(), alpha=1 - m)
