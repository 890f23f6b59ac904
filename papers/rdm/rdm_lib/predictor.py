"""The RDM "predictor": a fixed spectral filter of the (all-gathered) batch feature matrix (spec §2a-2c).

Notation: ``p`` is the N x D online output of one view, ``z`` the N x D target output of the other view,
``p = U diag(s) V^T`` a thin SVD, and ``f`` the filter chosen by ``pred_type``::

    poly : f(s) = s ** sigma        log  : f(s) = ln(s)
    log_1: f(s) = ln(1 + s)         log_2: f(s) = ln(1 + s ** 2)

solo-learn variant (CIFAR / ImageNet-100, ``solo/methods/rdm{simsiam,byol}.py``)
    online: ``p <- p @ V diag(f(s_p)) V^T``                       (always the thin SVD of p)
    target: ``z <- U_z diag(s_z ** (1 + sigma)) V_z^T``           (z's own spectrum; pred_type ignored)

ImageNet variant (``imagenet/main_simsiam.py`` ``loss_function``)
    basis from the online batch p (thin SVD when N < D, else ``eigh(p^T p)`` with ``s = sqrt(eigenvalues)``)
    online: ``p <- p @ V diag(f(s_p)) V^T``
    target: ``z <- z @ V_p diag(s_p ** sigma) V_p^T``             (the *other view's online* spectrum)

Precision: the solo-learn filter is built in fp32 with autocast off (the original casts p to
``torch.cuda.FloatTensor``) and cast back to the dtype of the tensor it multiplies; the ImageNet filter has no
casts, as the original: it is built in the input's dtype. Both run under ``no_grad``; gradients flow into ``p``
through a constant matrix.

Zero-singular-value guard: OFF by default (``guard=False`` is the original formula, bit for bit); opt-in with
``--rdm-guard`` (ImageNet) / ``--rdm_guard`` (solo). The original has no protection where ``f`` is singular
at 0 (``log``, negative exponents): a numerically-zero singular value gives ``-inf``/``inf`` or a huge weight,
and ``eigh`` may return tiny negative eigenvalues whose square root is NaN. When it matters: a batch-centred
output (SimSiam's output BN) with N < D has rank <= N - 1, so one singular value is round-off at *every* step;
then ``log`` gives ``-inf`` (a NaN loss), negative powers give a huge weight to a round-off direction, and
``1 + sigma <= 0`` in the solo target gives that direction full weight (``0^0 = 1``). With ``guard=True``:

* eigenvalues of ``p^T p`` are clamped at 0 before the square root (eigh branch);
* when the map is singular at 0 (``log``; ``poly`` with a negative exponent: ``sigma`` online and for the
  ImageNet target), singular values ``s <= tol`` are treated as exactly zero and their direction gets
  weight 0 (dropped from the filter);
* the solo target ``U diag(s^(1+sigma)) V^T`` with ``1 + sigma <= 0`` drops such directions the same way.

``tol = s_max * max(N, D) * eps`` for an SVD, ``s_max * sqrt(D * eps)`` for the eigh branch (error of
``eigh`` on ``p^T p``), ``eps`` of the dtype the filter is built in. Where every singular value is above
``tol`` (and no eigenvalue is negative) the guard selects the original values with ``torch.where``, so the
output is bit-identical to the unguarded filter.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Tuple

import torch

PRED_TYPES = ("poly", "log", "log_1", "log_2")
PRED_LOCATIONS = ("online", "target")
EPS32 = torch.finfo(torch.float32).eps


def fp32_filter(fn):
    """Run a filter builder with autocast off and under ``no_grad`` (the solo builders then cast to fp32, as
    the original does under AMP; the ImageNet ones keep the input dtype)."""
    @functools.wraps(fn)
    def wrapper(x, *args, **kwargs):
        ctx = torch.autocast("cuda", enabled=False) if x.is_cuda else contextlib.nullcontext()
        with ctx, torch.no_grad():
            return fn(x, *args, **kwargs)
    return wrapper


def check_pred_args(pred_type: str, pred_location: str, allow_mlp: bool = False) -> None:
    """Raise a one-line error for unknown values (the original crashes with UnboundLocalError)."""
    from core.errors import UserError

    allowed = PRED_TYPES + (("mlp",) if allow_mlp else ())
    if pred_type not in allowed:
        raise UserError(f"unknown pred_type '{pred_type}' (choose one of {', '.join(allowed)})")
    if pred_location not in PRED_LOCATIONS:
        raise UserError(f"unknown pred_location '{pred_location}' (choose one of {', '.join(PRED_LOCATIONS)})")


def spectral_map(s: torch.Tensor, pred_type: str, sigma: float) -> torch.Tensor:
    """``f(s)`` of the table above, applied elementwise to singular values ``s``."""
    if pred_type == "poly":
        return s.pow(sigma)
    if pred_type == "log":
        return torch.log(s)
    if pred_type == "log_1":
        return torch.log(1 + s)
    if pred_type == "log_2":
        return torch.log(1 + s.pow(2))
    raise ValueError(f"unknown pred_type {pred_type!r}")


def singular_at_zero(pred_type: str, exponent: float) -> bool:
    """True when ``f`` is unbounded at s = 0: ``log``, or ``poly`` with a negative exponent."""
    return pred_type == "log" or (pred_type == "poly" and exponent < 0)


def _guarded(values: torch.Tensor, s: torch.Tensor, tol: torch.Tensor, active: bool) -> torch.Tensor:
    if not active:
        return values
    return torch.where(s > tol, values, torch.zeros_like(values))


def _eps(s: torch.Tensor) -> float:
    return torch.finfo(s.dtype).eps if s.is_floating_point() else EPS32


def svd_tol(s: torch.Tensor, n: int, d: int) -> torch.Tensor:
    return s.max() * max(n, d) * _eps(s)


def eigh_tol(s: torch.Tensor, d: int) -> torch.Tensor:
    return s.max() * (d * _eps(s)) ** 0.5


@fp32_filter
def imagenet_basis(p: torch.Tensor, guard: bool = False) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Spectrum of the online batch as in ``imagenet/main_simsiam.py``: ``(s, V, tol)`` with V's columns the
    right singular vectors. N < D: thin SVD of p (V is D x N); else eigh of ``p^T p`` (ascending, V is D x D)
    and ``s = sqrt(eigenvalues)`` (clamped at 0 when guarded). In p's own dtype (the original has no casts)."""
    b, d = p.shape
    if b < d:
        _, s, vh = torch.linalg.svd(p, full_matrices=False)
        return s, vh.t(), svd_tol(s, b, d)
    lam, v = torch.linalg.eigh(p.t() @ p)
    if guard:
        lam = torch.where(lam > 0, lam, torch.zeros_like(lam))
    s = torch.sqrt(lam)
    return s, v, eigh_tol(torch.nan_to_num(s), d)


@fp32_filter
def online_filter_solo(p: torch.Tensor, pred_type: str, sigma: float, guard: bool = False) -> torch.Tensor:
    """solo-learn online filter ``W = V diag(f(s)) V^T`` (D x D, fp32) from the thin SVD of p."""
    p = p.float()
    _, s, vh = torch.linalg.svd(p, full_matrices=False)
    f = spectral_map(s, pred_type, sigma)
    f = _guarded(f, s, svd_tol(s, *p.shape), guard and singular_at_zero(pred_type, sigma))
    return vh.t() @ torch.diag(f) @ vh


@fp32_filter
def target_transform_solo(z: torch.Tensor, sigma: float, guard: bool = False) -> torch.Tensor:
    """solo-learn target map: ``U diag(s ** (1 + sigma)) V^T`` from z's own thin SVD (fp32)."""
    z = z.float()
    u, s, vh = torch.linalg.svd(z, full_matrices=False)
    g = s.pow(1 + sigma)
    g = _guarded(g, s, svd_tol(s, *z.shape), guard and 1 + sigma <= 0)
    return u @ torch.diag(g) @ vh


@fp32_filter
def online_filter_imagenet(p: torch.Tensor, pred_type: str, sigma: float, guard: bool = False) -> torch.Tensor:
    """ImageNet online filter ``W = V diag(f(s)) V^T`` with the basis of :func:`imagenet_basis`."""
    s, v, tol = imagenet_basis(p, guard)
    f = _guarded(spectral_map(s, pred_type, sigma), s, tol, guard and singular_at_zero(pred_type, sigma))
    return v @ torch.diag(f) @ v.t()


@fp32_filter
def target_filter_imagenet(p: torch.Tensor, sigma: float, guard: bool = False) -> torch.Tensor:
    """ImageNet target filter ``W = V_p diag(s_p ** sigma) V_p^T`` (applied as ``z @ W``); pred_type ignored."""
    s, v, tol = imagenet_basis(p, guard)
    f = _guarded(s.pow(sigma), s, tol, guard and singular_at_zero("poly", sigma))
    return v @ torch.diag(f) @ v.t()


def apply_solo(p: torch.Tensor, z: torch.Tensor, pred_type: str, pred_location: str, sigma: float,
               guard: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """solo-learn ``loss(p, z)`` before the base loss: returns ``(p', z')`` for already-gathered p, z.

    online: ``p' = p @ W.detach()`` (gradient into p through a constant W), ``z' = z``;
    target: ``p' = p`` (no predictor), ``z' = U diag(s^(1+sigma)) V^T`` (no gradient).
    Results keep the input dtype (the original casts W / z' to fp16 under AMP)."""
    if pred_location == "online":
        w = online_filter_solo(p, pred_type, sigma, guard)
        return p @ w.to(p.dtype), z
    if pred_location == "target":
        return p, target_transform_solo(z, sigma, guard).to(z.dtype)
    raise ValueError(f"unknown pred_location {pred_location!r}")


def apply_imagenet(p: torch.Tensor, z: torch.Tensor, pred_type: str, pred_location: str, sigma: float,
                   guard: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """ImageNet ``loss_function`` before the cosine: ``(p @ W, z)`` online, ``(p, z @ W_p)`` target, in the
    inputs' dtype. ``z`` is detached here; the original relies on its builder having returned ``z.detach()``."""
    if pred_location == "online":
        w = online_filter_imagenet(p, pred_type, sigma, guard)
        return p @ w, z
    if pred_location == "target":
        w = target_filter_imagenet(p, sigma, guard)
        return p, z.detach() @ w
    raise ValueError(f"unknown pred_location {pred_location!r}")
