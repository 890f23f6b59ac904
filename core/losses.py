"""Siamese SSL losses as pure functions of tensors (the original loss forms).

Batch statistics that the original methods compute over the global batch use
:func:`core.dist.all_gather_grad` when ``gather=True``; on one process that is the identity.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from core import dist
from core.errors import UserError


def _need_batch(n: int, what: str) -> None:
    """A batch variance needs at least two samples (one gives D or NaN, not a loss)."""
    if n < 2:
        raise UserError(f"{what} needs a (global) batch of at least 2 samples, got {n}")


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, tau: float = 0.2, gather: bool = True) -> torch.Tensor:
    """SimCLR NT-Xent over the 2N views of the (global) batch: for each view, cross-entropy of its positive
    against the 2N-2 other views, cosine similarities divided by ``tau``; mean over the 2N anchors."""
    z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    if gather:
        z1, z2 = dist.all_gather_grad(z1), dist.all_gather_grad(z2)
    n = z1.shape[0]
    z = torch.cat([z1, z2], dim=0)
    sim = z @ z.t() / tau
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    targets = torch.arange(2 * n, device=z.device).roll(n)  # view i's positive is i + n (mod 2n), on the device
    return F.cross_entropy(sim, targets)


def info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, tau: float = 0.07) -> torch.Tensor:
    """MoCo InfoNCE: logits ``[q.k, q.queue^T] / tau`` with the positive in column 0 (q, k normalised,
    ``queue`` is K x D of normalised keys)."""
    pos = (q * k).sum(dim=1, keepdim=True)
    neg = q @ queue.t()
    logits = torch.cat([pos, neg], dim=1) / tau
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


def neg_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """SimSiam ``D(p, z) = -cos(p, stopgrad(z))``, mean over the batch."""
    return -F.cosine_similarity(p, z.detach(), dim=-1).mean()


def byol_mse(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL ``2 - 2 cos(p, stopgrad(z))``, mean over the batch."""
    return (2 - 2 * F.cosine_similarity(p, z.detach(), dim=-1)).mean()


def _bn_standardise(z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Affine-free BatchNorm1d in training mode (biased variance)."""
    return (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + eps)


def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float = 0.0051, gather: bool = True,
                      eps: float = 1e-5) -> torch.Tensor:
    """Barlow Twins: C = BN(z1)^T BN(z2) / N over the global batch;
    ``sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2``."""
    if gather:
        z1, z2 = dist.all_gather_grad(z1), dist.all_gather_grad(z2)
    n = z1.shape[0]
    _need_batch(n, "the Barlow Twins loss")
    c = _bn_standardise(z1, eps).t() @ _bn_standardise(z2, eps) / n
    on = (torch.diagonal(c) - 1).pow(2).sum()
    off = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
    return on + lambd * off


def vicreg_loss(z1: torch.Tensor, z2: torch.Tensor, sim_coeff: float = 25.0, std_coeff: float = 25.0,
                cov_coeff: float = 1.0, gather: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """VICReg: ``sim * MSE(z1, z2) + std * mean(relu(1 - sqrt(var + eps)))/2 per view + cov * off-diag(C)^2 / D``
    per view, with variance and covariance over the global batch."""
    repr_loss = F.mse_loss(z1, z2)
    if gather:
        z1, z2 = dist.all_gather_grad(z1), dist.all_gather_grad(z2)
    n, d = z1.shape
    _need_batch(n, "the VICReg loss")
    x, y = z1 - z1.mean(0), z2 - z2.mean(0)
    std_x, std_y = torch.sqrt(x.var(0) + eps), torch.sqrt(y.var(0) + eps)
    std_loss = F.relu(1 - std_x).mean() / 2 + F.relu(1 - std_y).mean() / 2
    cx, cy = x.t() @ x / (n - 1), y.t() @ y / (n - 1)
    off = lambda c: c.pow(2).sum() - torch.diagonal(c).pow(2).sum()  # noqa: E731
    cov_loss = off(cx) / d + off(cy) / d
    return sim_coeff * repr_loss + std_coeff * std_loss + cov_coeff * cov_loss


def align_loss(x: torch.Tensor, y: torch.Tensor, alpha: float = 2) -> torch.Tensor:
    """Wang & Isola alignment: ``E ||x - y||_2^alpha`` for normalised positive pairs."""
    return (x - y).norm(p=2, dim=1).pow(alpha).mean()


def uniform_loss(x: torch.Tensor, t: float = 2) -> torch.Tensor:
    """Wang & Isola uniformity: ``log E exp(-t ||x_i - x_j||^2)`` over distinct pairs i < j."""
    return torch.pdist(x, p=2).pow(2).mul(-t).exp().mean().log()
