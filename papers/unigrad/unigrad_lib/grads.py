"""Gradient forms of the unified framework (Tao et al., CVPR 2022, "Exploring the Equivalence of Siamese SSL
via a Unified Gradient Framework"), as pure functions of tensors.

Notation (rows are samples, every feature L2-normalised): ``u`` the online embedding of one view (receives
the gradient), ``pos`` the positive target of the *other* view (momentum embedding, or the stop-gradient
online embedding without momentum encoder), banks/keys/``F`` are built from targets and carry no gradient.

Each ``*_grad`` function returns the per-sample gradient ``g`` (B x C) that the method wants on ``u``;
:func:`surrogate` turns it into the scalar ``mean_i <stopgrad(g_i), u_i>`` whose autograd gradient w.r.t.
``u_i`` is exactly ``g_i / B`` (original ``project/pretrainer.py`` trick: no custom autograd).
Every form has the unified structure  g = -(positive) + lambda * (weighted sum of negatives).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as Fn

from core import dist


def _f32(x: torch.Tensor) -> torch.Tensor:
    """At least fp32 (fp64 inputs stay fp64)."""
    return x if x.dtype == torch.float64 else x.float()


def surrogate(g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """mean_i <sg(g_i), u_i>: d/du_i = g_i / B."""
    return (g.detach() * u).sum(dim=1).mean()


def symmetric_surrogate(g1, u1, g2, u2) -> torch.Tensor:
    """1/2 [mean_i <sg(g1_i), u1_i> + mean_i <sg(g2_i), u2_i>] (the loss of every gradient form)."""
    return 0.5 * (surrogate(g1, u1) + surrogate(g2, u2))


# ------------------------------------------------------------------------------------- correlation matrix F
@torch.no_grad()
def batch_correlation(t1: torch.Tensor, t2: torch.Tensor, reduce: bool = True) -> torch.Tensor:
    """F_hat = (T1^T T1 + T2^T T2) / (2 B): uncentred second moment of the targets of both views, computed
    per rank on the local batch and averaged over ranks (original: all_reduce sum / world_size)."""
    t1, t2 = _f32(t1), _f32(t2)
    f = (t1.t() @ t1 + t2.t() @ t2) / (2 * t1.shape[0])
    return dist.all_reduce_mean(f) if reduce else f


@torch.no_grad()
def ema_correlation(F: Optional[torch.Tensor], F_hat: torch.Tensor, rho: float) -> torch.Tensor:
    """F <- F_hat at the first step, then F <- rho F + (1 - rho) F_hat (updated before the gradient)."""
    if F is None:
        return F_hat.detach().clone()
    return rho * F + (1.0 - rho) * F_hat


# ------------------------------------------------------------------------------------------ gradient forms
@torch.no_grad()
def unigrad_grad(u: torch.Tensor, pos: torch.Tensor, F: torch.Tensor, lambd: float) -> torch.Tensor:
    """UniGrad (README / Fig. 1): dL/du_1 = -u_2^m + lambda F u_1 (``loss_unigrad``, lambda 100)."""
    return -pos + lambd * (u @ F.to(u.dtype))


@torch.no_grad()
def contrastive_grad(u: torch.Tensor, pos: torch.Tensor, keys: torch.Tensor, tau: float) -> torch.Tensor:
    """Contrastive (SimCLR form, ``loss_simclr_grad_mm``): (1/tau) (-u_2 + sum_v s_v v) with
    s_v = softmax_v(u_1 . v / tau) over every key in ``keys`` (both views of the global batch, the positive
    included, no mask). Equals d/du_1 of InfoNCE with the keys held constant."""
    s = torch.softmax(_f32(u @ keys.t()) / tau, dim=1).to(u.dtype)
    return (-pos + s @ keys) / tau


@torch.no_grad()
def moco_grad(u: torch.Tensor, pos: torch.Tensor, queue: torch.Tensor, tau: float) -> torch.Tensor:
    """Contrastive (MoCo form): as :func:`contrastive_grad` with V = {own positive u_2} + queue of past keys,
    i.e. d/du_1 of MoCo's InfoNCE  -log exp(u_1.u_2/tau) / (exp(u_1.u_2/tau) + sum_q exp(u_1.q/tau))."""
    logits = _f32(torch.cat([(u * pos).sum(1, keepdim=True), u @ queue.t()], dim=1)) / tau
    s = torch.softmax(logits, dim=1).to(u.dtype)
    return (-pos + s[:, :1] * pos + s[:, 1:] @ queue) / tau


@torch.no_grad()
def directpred_matrices(F: torch.Tensor, eps: float):
    """DirectPred predictor from F (``loss_byol_directpred_grad``): F = U diag(s) V^T, s_hat = s / max(s),
    W_p = U diag(clamp(sqrt(s_hat) + eps, min=1e-4)) V^T, A = F / max(s) + eps^2 I (fp32)."""
    Ff = _f32(F)
    U, s, Vh = torch.linalg.svd(Ff)
    s_max = s.max()
    d = torch.clamp(torch.sqrt(s / s_max) + eps, min=1e-4)
    W_p = U @ torch.diag(d) @ Vh
    A = Ff / s_max + (eps ** 2) * torch.eye(F.shape[0], device=F.device, dtype=Ff.dtype)
    return W_p, A


@torch.no_grad()
def directpred_grad(u: torch.Tensor, pos: torch.Tensor, F: torch.Tensor, eps: float,
                    matrices: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
    """Asymmetric networks (BYOL/SimSiam with the DirectPred predictor), row-vector form of the original:
    g = (-pos W_p + lambda_i u A) / ||u W_p||, lambda_i = <u W_p, pos> / (u A u^T).
    With eps = 0 (A = W_p^T W_p) this is exactly d/du of -cos(u W_p, pos).
    ``matrices``: ``directpred_matrices(F, eps)`` computed once per step for both views (one SVD of F per
    step, as the original ``loss_byol_directpred_grad``)."""
    W_p, A = matrices if matrices is not None else directpred_matrices(F, eps)
    uf, pf = _f32(u), _f32(pos)
    W_p, A = W_p.to(uf.dtype), A.to(uf.dtype)
    uw = uf @ W_p
    c = torch.linalg.norm(uw, dim=1, keepdim=True)
    ua = uf @ A
    lam = (uw * pf).sum(1, keepdim=True) / (ua * uf).sum(1, keepdim=True)
    return ((-(pf @ W_p) + lam * ua) / c).to(u.dtype)


@torch.no_grad()
def barlow_twins_grad(pos: torch.Tensor, pos_bank: torch.Tensor, u_bank: torch.Tensor, lambd: float,
                      n: int) -> torch.Tensor:
    """Feature decorrelation, Barlow Twins form (``loss_barlow_twins_grad_mm``):
    g_i = 2 (-u_2,i + lambda (1/N) sum_j <u_2,i, v_2,j> v_1,j); weights from the targets of the other view
    (``pos``/``pos_bank``), summed vectors the detached online features of the same view (``u_bank``); the
    sum runs over the global batch, j = i included; N = whole_batch_size."""
    return 2.0 * (-pos + lambd * ((pos @ pos_bank.t()) @ u_bank) / n)


@torch.no_grad()
def vicreg_grad(u: torch.Tensor, pos: torch.Tensor, u_mean: torch.Tensor, bank: torch.Tensor, lambd: float,
                n: int) -> torch.Tensor:
    """Feature decorrelation, VICReg form (derived from the paper's unified formula; VICReg's covariance is
    computed on centred features of one branch): g_i = 2 (-u_2,i + lambda (1/N) sum_j <u~_1,i, v~_1,j> v~_1,j)
    with u~ = u - mean(global online batch), v~ = v - mean(bank), ``bank`` the targets of the same view.
    The variance hinge term is dropped (the paper treats it as a minor term)."""
    bank_c = bank - bank.mean(0, keepdim=True)
    u_c = u - u_mean
    return 2.0 * (-pos + lambd * ((u_c @ bank_c.t()) @ bank_c) / n)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """F.normalize(dim=1, eps=1e-12) as the original trainer applies to z1, z2, z1m, z2m."""
    return Fn.normalize(x, dim=1)
