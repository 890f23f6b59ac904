"""Loss terms of MoCo + Alignment/Uniformity (Wang & Isola, ICML 2020), as pure functions of tensors.

Notation (``moco/builder.py`` of SsnL/moco_align_uniform): ``q`` (N, d) L2-normalised queries, ``k`` (N, d)
L2-normalised keys (no gradient), ``queue`` (d, K) unit-norm columns u_j (no gradient).

* :func:`align_term`   -- L_align with the three code paths of the original (alpha = 2, 1, other).
* :func:`uniform_term` -- L_uniform over query-queue squared distances 2 - 2 q.u (Eq. 17), plus the
  intra-batch query pairs pooled into the same mean (Eq. 18, default).
* :func:`contrastive_term` -- InfoNCE with the positive in column 0 of the logits.
* :func:`log_mean_exp` -- the numerically stable log(mean(exp(x))) used by the uniformity terms.
* ``align_loss`` / ``uniform_loss`` -- the companion reference losses of SsnL/align_uniform (re-exported from
  :mod:`core.losses`).
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F

from core.losses import align_loss, uniform_loss  # noqa: F401  (reference losses of SsnL/align_uniform)

__all__ = ["align_term", "uniform_term", "contrastive_term", "log_mean_exp", "MoCoLosses",
           "align_loss", "uniform_loss", "positive_sims", "queue_sims"]


def log_mean_exp(x: torch.Tensor) -> torch.Tensor:
    """``log(mean(exp(x)))`` over all elements, as ``logsumexp(x) - log(n)`` (max-shifted, so it never
    underflows to ``log(0)``; identical to the original exp -> mean -> log wherever that is finite)."""
    x = x.reshape(-1)
    if x.numel() == 0:
        raise ValueError("log_mean_exp of an empty tensor (uniformity needs at least one pair)")
    return torch.logsumexp(x, dim=0) - math.log(x.numel())


def positive_sims(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """s_i = q_i . k_i, shape (N,) (the cached ``_qk`` of the original builder)."""
    return (q * k).sum(dim=1)


def queue_sims(q: torch.Tensor, queue: torch.Tensor) -> torch.Tensor:
    """P = q U, shape (N, K) with U the (d, K) queue (detached, the cached ``_qqueue`` of the original)."""
    return q @ queue.detach()


def align_term(q: torch.Tensor, k: torch.Tensor, alpha: float,
               qk: Optional[torch.Tensor] = None) -> torch.Tensor:
    """L_align = mean_i ||q_i - k_i||^alpha, through the original's three code paths:

    * alpha == 2: ``2 - 2 * mean_i(q_i . k_i)`` (equal to the squared distance for unit vectors);
    * alpha == 1: ``mean_i ||q_i - k_i||_2`` with an explicit norm;
    * otherwise: ``mean_i (2 - 2 q_i . k_i) ** (alpha / 2)``; the rounding-negative values of 2 - 2 q.k
      (when q_i == k_i up to float error) are clamped at 0 first (the original would give NaN there).
    """
    if qk is None:
        qk = positive_sims(q, k)
    if alpha == 2:
        return 2 - 2 * qk.mean()
    if alpha == 1:
        return (q - k).norm(p=2, dim=1).mean()
    return (2 - 2 * qk).clamp_min(0).pow(alpha / 2).mean()


def uniform_term(q: torch.Tensor, queue: torch.Tensor, t: float, intra_batch: bool = True,
                 qqueue: Optional[torch.Tensor] = None) -> torch.Tensor:
    """L_uniform with queue negatives.

    Eq. 17 (``intra_batch=False``): ``log( 1/(NK) sum_{i,j} exp(-t (2 - 2 q_i . u_j)) )``.
    Eq. 18 (``intra_batch=True``, the default): the N(N-1)/2 exact squared distances ||q_i - q_i'||^2, i < i'
    (``torch.pdist(q) ** 2``), are appended to the N*K query-queue distances and everything is pooled into ONE
    mean: ``log( (sum_{i,j} e^{-t d_ij} + sum_{i<i'} e^{-t ||q_i - q_i'||^2}) / (NK + C(N,2)) )``.
    Gradient reaches ``q`` only (the queue is detached; both ends of an intra-batch pair are queries).
    """
    if qqueue is None:
        qqueue = queue_sims(q, queue)
    sq_dists = (2 - 2 * qqueue).flatten()
    if intra_batch:
        sq_dists = torch.cat([sq_dists, torch.pdist(q, p=2).pow(2)])
    return log_mean_exp(sq_dists * (-t))


def contrastive_term(qk: torch.Tensor, qqueue: torch.Tensor, tau: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """InfoNCE of MoCo: logits ``[q_i.k_i, q_i.u_1..K] / tau`` (N, 1+K), cross-entropy with target 0 (the
    positive sits in column 0), averaged over the N rows. Returns ``(loss, logits)``."""
    logits = torch.cat([qk.unsqueeze(1), qqueue], dim=1) / tau
    target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, target), logits


class MoCoLosses(NamedTuple):
    """The losses of one MoCo forward (``MoCoLosses`` of the original); unused terms are ``None``."""

    loss_contr: Optional[torch.Tensor] = None
    logits_contr: Optional[torch.Tensor] = None
    loss_align: Optional[torch.Tensor] = None
    loss_unif: Optional[torch.Tensor] = None

    def combine(self, contr_w: float = 1, align_w: float = 1, unif_w: float = 1) -> torch.Tensor:
        """``w_c L_contr + w_a L_align + w_u L_unif``; a zero weight skips its term entirely."""
        total = None
        for w, term, name in ((contr_w, self.loss_contr, "contrastive"), (align_w, self.loss_align, "align"),
                              (unif_w, self.loss_unif, "uniform")):
            if w == 0:
                continue
            if term is None:
                raise ValueError(f"the {name} loss has weight {w:g} but was not computed")
            total = w * term if total is None else total + w * term
        if total is None:
            raise ValueError("all loss weights are zero: nothing to optimise")
        return total
