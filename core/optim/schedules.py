"""Learning-rate, momentum and weight-decay schedules as pure functions of the step or epoch.

Each one cites the original code it reproduces; tests pin them to hand-computed values.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def cosine_epoch_lr(base_lr: float, epoch: int, epochs: int) -> float:
    """MoCo ``--cos`` / SimSiam / lineval: ``base * 0.5 * (1 + cos(pi * epoch / epochs))``, set once per epoch."""
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))


def step_lr(base_lr: float, epoch: int, milestones: Sequence[int], gamma: float = 0.1) -> float:
    """MoCo step schedule: multiply by ``gamma`` for every milestone with ``epoch >= milestone``."""
    lr = base_lr
    for m in milestones:
        lr *= gamma if epoch >= m else 1.0
    return lr


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, base_lr: float,
                  warmup_start_lr: float = 0.0, min_lr: float = 0.0) -> float:
    """pl_bolts ``LinearWarmupCosineAnnealingLR`` (solo-learn ``warmup_cosine``), closed form per step:
    linear from ``warmup_start_lr`` reaching ``base_lr`` at step ``warmup_steps - 1``, then cosine to ``min_lr``
    at ``total_steps``."""
    if step < warmup_steps:
        return warmup_start_lr + step * (base_lr - warmup_start_lr) / max(1, warmup_steps - 1)
    span = max(1, total_steps - warmup_steps)
    return min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * (step - warmup_steps) / span))


def unigrad_lr(step: int, total_steps: int, warmup_steps: int, base_lr: float, min_ratio: float = 1e-3) -> float:
    """UniGrad ``adjust_lr``: min = 1e-3 * base; warm-up ``(max - min) * step / Tw + min``; then
    ``min + 0.5 (max - min)(1 + cos(pi (step - Tw) / T))`` — divided by the *total* T (quirk kept)."""
    lo = base_lr * min_ratio
    if step < warmup_steps:
        return (base_lr - lo) * step / warmup_steps + lo
    return lo + 0.5 * (base_lr - lo) * (1 + math.cos(math.pi * (step - warmup_steps) / total_steps))


def ema_momentum(base: float, step: int, total_steps: int, final: float = 1.0) -> float:
    """BYOL cosine EMA schedule: ``final - (final - base) * (cos(pi * step / total) + 1) / 2``
    (0.996 -> 1.0 for UniGrad; solo-learn tau 0.99 -> 1.0)."""
    return final - (final - base) * (math.cos(math.pi * step / total_steps) + 1) / 2


def cosine_scheduler(base_value: float, final_value: float, epochs: int, niter_per_ep: int,
                     warmup_epochs: int = 0, start_warmup_value: float = 0.0) -> np.ndarray:
    """DINO / TWIST ``utils.cosine_scheduler``: an array of one value per iteration, optional linear warm-up,
    then ``final + 0.5 (base - final)(1 + cos(pi i / len))`` over the remaining iterations."""
    warmup_iters = warmup_epochs * niter_per_ep
    warm = np.linspace(start_warmup_value, base_value, warmup_iters) if warmup_iters > 0 else np.array([])
    iters = np.arange(epochs * niter_per_ep - warmup_iters)
    sched = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * iters / len(iters)))
    out = np.concatenate((warm, sched))
    assert len(out) == epochs * niter_per_ep
    return out


def twist_warmup_epochs(epochs: int) -> int:
    """TWIST forces 10 warm-up epochs, 5 for runs of <= 50 epochs and 3 for <= 20."""
    return 3 if epochs <= 20 else 5 if epochs <= 50 else 10


def twist_lr(step: int, niter_per_ep: int, epochs: int, mme_epochs: int, lr: float, lr_sl: float,
             sl_warmup_epochs: int = 5, final_ratio: float = 0.001) -> float:
    """TWIST ``adjust_learning_rate`` (spec 5.3): warm-up, cosine to 0.001 until ``mme_epochs``, then a second
    linear warm-up to ``lr_sl`` over ``sl_warmup_epochs`` and a cosine to 0.001 until the end. ``lr`` and
    ``lr_sl`` are already scaled by the global batch / 256."""
    N = niter_per_ep
    w = twist_warmup_epochs(epochs) * N
    M, S, T = mme_epochs * N, sl_warmup_epochs * N, epochs * N
    if step < w:
        return step / w * lr
    if step < M:
        q = 0.5 * (1 + math.cos(math.pi * (step - w) / (M - w)))
        return (q + final_ratio * (1 - q)) * lr
    if step < M + S:
        return (step - M) / S * lr_sl
    q = 0.5 * (1 + math.cos(math.pi * (step - M - S) / max(1, T - M - S)))
    return (q + final_ratio * (1 - q)) * lr_sl
