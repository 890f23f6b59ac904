"""Supervised training of a classifier on a (frozen or fine-tuned) backbone through :func:`core.engine.train`:
the linear probe and the semi-supervised 1 % / 10 % fine-tuning of TWIST ``evaluate.py`` (Barlow Twins style)
and the ViT linear probe of ``evaluate_vitlinear.py`` (DINO style). Per-epoch cosine lr, validation every
``val_every`` epochs with the best top-1/top-5, the frozen-backbone sanity check, auto-resume. The MoCo/SimSiam
``main_lincls`` protocol (whole model in eval mode) is :func:`core.eval.linear.run_linear_eval`; subsets come
from :func:`core.data.subset_by_file_list`.
"""
from __future__ import annotations

import json
import os
from typing import Callable, Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.engine import EngineConfig, train
from core.eval.linear import accuracy, init_linear_head, sanity_check, validate
from core.optim import cosine_epoch_lr


class Classifier(nn.Module):
    """``fc(features(backbone, x))``. With ``freeze`` the backbone has no gradients and stays in eval mode
    (frozen BN statistics) even while the engine puts the model in training mode."""

    def __init__(self, backbone: nn.Module, feat_dim: int, num_classes: int, freeze: bool,
                 features: Optional[Callable] = None):
        super().__init__()
        self.backbone = backbone
        self.fc = nn.Linear(feat_dim, num_classes)
        init_linear_head(self.fc, 0.01)
        self.freeze = freeze
        self._features = features
        if freeze:
            for p in self.backbone.parameters():
                p.requires_grad = False

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze:
            self.backbone.eval()
        return self

    def forward(self, batch):
        if torch.is_tensor(batch):
            if self.freeze:
                with torch.no_grad():
                    f = self._features(self.backbone, batch) if self._features else self.backbone(batch)
            else:
                f = self._features(self.backbone, batch) if self._features else self.backbone(batch)
            return self.fc(f)
        x, y = batch
        out = self(x)
        loss = F.cross_entropy(out, y)
        return loss, {"acc1": accuracy(out.detach(), y)[0].float() * 100 / y.shape[0]}


def validates(epoch: int, every: int, epochs: int) -> bool:
    """Validation epochs of both originals (Barlow-Twins-style ``evaluate.py`` and DINO-style
    ``evaluate_vitlinear.py``): ``epoch % every == 0 or epoch == epochs - 1`` (0-based epochs)."""
    return epoch % every == 0 or epoch == epochs - 1


def train_classifier(model: Classifier, wrapped: nn.Module, optimizer, train_loader, val_loader, *, epochs: int, out_dir: str,
        ctx, val_every: int = 1, max_steps: Optional[int] = None, print_freq: int = 100,
        reference: Optional[Dict[str, torch.Tensor]] = None, desc: str = "linear",
        ckpt_name: str = "checkpoint.pth") -> Dict[str, float]:
    """Train with the engine (auto-resume from ``out_dir/<ckpt_name>``); lr of every group is its
    ``initial_lr`` times ``0.5 (1 + cos(pi epoch / epochs))`` (``CosineAnnealingLR`` stepped per epoch).
    Validates at the epochs of :func:`validates` (0, n, 2n, ... and the last); ``stats.txt`` gets one JSON
    line per validation; returns the best top-1."""
    os.makedirs(out_dir, exist_ok=True)
    for g in optimizer.param_groups:
        g.setdefault("initial_lr", g["lr"])
    niter = len(train_loader) if not max_steps else min(len(train_loader), max_steps)
    best = {"best_acc1": 0.0, "best_acc5": 0.0}
    history: List[Dict] = []

    def before_step(step, total):
        if step % niter == 0:
            e = step // niter
            for g in optimizer.param_groups:
                g["lr"] = cosine_epoch_lr(g["initial_lr"], e, epochs)

    def end_epoch(epoch):
        if reference is not None:  # frozen backbone must not change
            sanity_check(model.backbone.state_dict(), reference, ignore=())
        if not validates(epoch, val_every, epochs):
            return {}
        res = validate(model, val_loader, ctx.device, max_steps)  # not through DDP: no collective per batch
        best["best_acc1"] = max(best["best_acc1"], res["acc1"])
        best["best_acc5"] = max(best["best_acc5"], res["acc5"])
        stats = {"epoch": epoch, "acc1": res["acc1"], "acc5": res["acc5"], "val_loss": res["loss"], **best}
        history.append(stats)
        if ctx.is_main:
            print(json.dumps(stats))
            with open(os.path.join(out_dir, "stats.txt"), "a") as f:
                f.write(json.dumps(stats) + "\n")
        return stats

    def extra_state(epoch):
        return dict(best)

    def load_extra_state(ckpt):
        for k in best:
            if k in ckpt:
                best[k] = float(ckpt[k])

    cfg = EngineConfig(epochs=epochs, output_dir=out_dir, amp="off", print_freq=print_freq,
                       ckpt_names=(ckpt_name,), resume="auto", max_steps_per_epoch=max_steps,
                       desc=desc, plot=False)
    train(wrapped, optimizer, train_loader, cfg, ctx, before_step=before_step, end_epoch=end_epoch,
          extra_state=extra_state, load_extra_state=load_extra_state)
    print(f"best top-1 {best['best_acc1']:.3f}")
    return dict(best)
