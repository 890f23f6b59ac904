"""Collapse diagnostics computed from embeddings, logged for every method.

* effective rank (Roy & Vetterli 2007): ``exp(H(p))`` with ``p = s / sum(s)`` over the singular values ``s``
  of the (centred) embedding matrix;
* std of L2-normalised features (lightly's collapse monitor; 1/sqrt(D) for uniform, 0 for collapse);
* alignment ``E ||f(x) - f(y)||^alpha`` and uniformity ``log E exp(-t ||f(x) - f(y)||^2)`` (Wang & Isola 2020)
  on normalised features;
* mean cosine similarity of the positive pairs.
"""
from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F

from core.losses import align_loss, uniform_loss


@torch.no_grad()
def singular_values(z: torch.Tensor, center: bool = True) -> torch.Tensor:
    """Singular values (descending) of the N x D embedding matrix, in float64 on the CPU."""
    z = z.detach().double().cpu()
    if center:
        z = z - z.mean(0, keepdim=True)
    return torch.linalg.svdvals(z)


@torch.no_grad()
def effective_rank(z: torch.Tensor, center: bool = True, eps: float = 1e-12) -> float:
    """Roy & Vetterli effective rank: ``exp(-sum p_k log p_k)``, ``p = s / ||s||_1``."""
    s = singular_values(z, center)
    p = s / s.sum().clamp_min(eps)
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


@torch.no_grad()
def l2_std(z: torch.Tensor) -> float:
    """Mean over dimensions of the std of L2-normalised features."""
    return float(F.normalize(z.detach().float(), dim=1).std(dim=0).mean())


@torch.no_grad()
def alignment(z1: torch.Tensor, z2: torch.Tensor, alpha: float = 2) -> float:
    return float(align_loss(F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1), alpha))


@torch.no_grad()
def uniformity(z: torch.Tensor, t: float = 2) -> float:
    return float(uniform_loss(F.normalize(z.float(), dim=1), t))


@torch.no_grad()
def positive_similarity(z1: torch.Tensor, z2: torch.Tensor) -> float:
    return float(F.cosine_similarity(z1.float(), z2.float(), dim=1).mean())


@torch.no_grad()
def collapse_metrics(z1: torch.Tensor, z2: torch.Tensor, prefix: str = "") -> Dict[str, float]:
    """All diagnostics for two views' embeddings (N x D each)."""
    both = torch.cat([z1, z2], 0)
    return {f"{prefix}eff_rank": effective_rank(both), f"{prefix}l2_std": l2_std(both),
            f"{prefix}align": alignment(z1, z2), f"{prefix}uniform": uniformity(both),
            f"{prefix}pos_sim": positive_similarity(z1, z2)}
