"""The TWIST objective as pure functions of tensors (``objective.py`` / ``engine.py`` of bytedance/TWIST).

Every function takes the logits (after the logit BatchNorm) of the **global** batch: the model gathers
them over ranks with :func:`core.dist.all_gather_grad` first, so the values are the paper's global-batch
quantities and, after DDP's gradient averaging, the gradients equal those of one process on the global
batch. (The original all-reduced per-rank means instead, which gives W times these values and the same
gradients; its logger undid the factor, see spec 3.3.)

Notation: p = softmax(f), p~ = softmax(f / tau), eps inside every log (``--EPS`` 1e-5).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F


def kl_div(p: torch.Tensor, q: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``KL(p, q)`` of ``objective.KL``: mean_i sum_k p_ik [log(p_ik + eps) - log(q_ik + eps)]."""
    return (p * ((p + eps).log() - (q + eps).log())).sum(dim=1).mean()


def mean_entropy(p: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Sharpness ``EH(p)``: mean_i of -sum_k p_ik log(p_ik + eps)."""
    return -(p * (p + eps).log()).sum(dim=1).mean()


def entropy_of_mean(p: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Diversity ``HE(p)``: -sum_k m_k log(m_k + eps) with m = mean_i p_i (the batch-mean distribution)."""
    m = p.mean(dim=0)
    return -(m * (m + eps).log()).sum()


def cross_entropy(p: torch.Tensor, q: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``objective.CE(p, q)``: -mean_i sum_k p_ik log(q_ik + eps) (soft-target cross-entropy of two
    distributions; defined, not used by the training paths of the original)."""
    return -(p * (q + eps).log()).sum(dim=1).mean()


def twist_pair_loss(fa: torch.Tensor, fb: torch.Tensor, lam1: float = 0.0, lam2: float = 1.0,
                    tau: float = 1.0, eps: float = 1e-5) -> Dict[str, torch.Tensor]:
    """``EntLoss`` for one pair of views (formula.png with alpha = 1 + lam1, beta = lam2):

    kl = 1/2 [KL(p_a||p_b) + KL(p_b||p_a)]            (plain softmax, no tau)
    eh = 1/2 [EH(p~_a) + EH(p~_b)],  he = 1/2 [HE(p~_a) + HE(p~_b)]
    final = kl + (1 + lam1) eh - lam2 he
    """
    pa, pb = F.softmax(fa, dim=-1), F.softmax(fb, dim=-1)
    ta, tb = F.softmax(fa / tau, dim=-1), F.softmax(fb / tau, dim=-1)
    kl = 0.5 * (kl_div(pa, pb, eps) + kl_div(pb, pa, eps))
    eh = 0.5 * (mean_entropy(ta, eps) + mean_entropy(tb, eps))
    he = 0.5 * (entropy_of_mean(ta, eps) + entropy_of_mean(tb, eps))
    return {"kl": kl, "eh": eh, "he": he, "final": kl + (1 + lam1) * eh - lam2 * he}


def crop_pairs(n_views: int) -> List[tuple]:
    """The multi-crop pairs of the ``sparse`` style: (i1, i2) with i1 in {0, 1} and i1 < i2 < n, i.e. the
    global-global pair and every global-local pair, no local-local pair (1 + 2L pairs)."""
    return [(i1, i2) for i1 in range(min(2, n_views)) for i2 in range(i1 + 1, n_views)]


def twist_multicrop_loss(views: Sequence[torch.Tensor], lam1: float = 0.0, lam2: float = 1.0,
                         tau: float = 1.0, eps: float = 1e-5) -> Dict[str, torch.Tensor]:
    """Stage (a): :func:`twist_pair_loss` averaged uniformly over :func:`crop_pairs` (every term)."""
    pairs = crop_pairs(len(views))
    terms = [twist_pair_loss(views[a], views[b], lam1, lam2, tau, eps) for a, b in pairs]
    return {k: sum(t[k] for t in terms) / len(terms) for k in terms[0]}


def twist_teacher_loss(teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor], lam1: float = 0.0,
                       lam2: float = 1.0, tau: float = 1.0, eps: float = 1e-5) -> Dict[str, torch.Tensor]:
    """Stage (b), momentum teacher (``--use_momentum_encoder 1``): with t_i = softmax(teacher_i / tau) for the
    two global crops and s_j = softmax(student_j / tau) for all n student crops,

    kl = mean over (i, j), i in {0, 1}, j != i, of KL(t_i || s_j)        (2n - 2 terms)
    eh = mean_j EH(s_j),  he = mean_j HE(s_j)                            (equal view weights)
    final = kl + (1 + lam1) eh - lam2 he
    The teacher is the target: pass detached teacher logits.
    """
    t = [F.softmax(x / tau, dim=-1) for x in teacher]
    s = [F.softmax(x / tau, dim=-1) for x in student]
    kls = [kl_div(t[i], s[j], eps) for i in range(len(t)) for j in range(len(s)) if i != j]
    kl = sum(kls) / len(kls)
    eh = sum(mean_entropy(x, eps) for x in s) / len(s)
    he = sum(entropy_of_mean(x, eps) for x in s) / len(s)
    return {"kl": kl, "eh": eh, "he": he, "final": kl + (1 + lam1) * eh - lam2 * he}


# ------------------------------------------------------------------------------------------ self-labeling
def confidence(p0: torch.Tensor, p1: torch.Tensor) -> torch.Tensor:
    """Per-sample confidence of stage (c): the larger of the two global views' maximum probability
    (detached)."""
    return torch.maximum(p0.max(dim=1).values, p1.max(dim=1).values).detach()


def quantile_threshold(conf: torch.Tensor, quantile: float, fixed: float = 0.0) -> torch.Tensor:
    """The confidence threshold: sort the (local, per-rank) confidences in descending order and take the one
    at position ``min(int(q * B), B - 1)``; with ``q == 0`` the fixed ``--threshold``. The mask is then
    ``conf > threshold`` (strict), i.e. about the top-q fraction of each batch."""
    if quantile == 0:
        return conf.new_full((), fixed)  # a fill on the device, no host-to-device copy
    ordered = conf.sort(descending=True).values
    return ordered[min(int(quantile * conf.shape[0]), conf.shape[0] - 1)]


def masked_cross_entropy(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                         weight: Optional[torch.Tensor] = None, reduction: str = "mean") -> torch.Tensor:
    """``objective.MaskedCrossEntropyLoss`` (from SCAN): cross-entropy of ``logits`` against ``target`` on the
    samples where ``mask`` is true, with optional class weights ``weight`` (C,):

    mean: sum_i m_i w_{y_i} ce_i / sum_i m_i w_{y_i}   (``F.cross_entropy(..., weight, 'mean')`` on the kept rows)
    sum:  sum_i m_i w_{y_i} ce_i
    none: w_{y_i} ce_i on kept rows and 0 on the others (the original returned only the kept rows)

    An empty mask gives ``0 * logits.sum()`` (zero with a graph), as the original. Computed with masked
    arithmetic instead of ``masked_select`` / boolean indexing, so it never reads a value back to the host.
    """
    ce = F.cross_entropy(logits, target, reduction="none")
    w = torch.ones_like(ce) if weight is None else weight.to(ce.dtype)[target]
    keep = mask.reshape(-1).to(torch.bool)
    wce = torch.where(keep, w * ce, torch.zeros_like(ce))
    if reduction == "none":
        return wce
    if reduction == "sum":
        return wce.sum()
    if reduction != "mean":
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    den = torch.where(keep, w, torch.zeros_like(w)).sum()
    safe = torch.where(den != 0, den, torch.ones_like(den))  # empty mask: 0 / 1 (no NaN in the backward)
    return torch.where(keep.any(), wce.sum() / safe, 0 * logits.sum())


def class_balancing_weights(target: torch.Tensor, mask: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``ConfidenceBasedCE(apply_class_balancing=True)``: with n kept samples and count_c of them labelled c,
    weight_c = 1 / (count_c / n) for every class present among the kept labels, 1 for the others."""
    m = mask.reshape(-1).to(torch.float32)
    counts = torch.zeros(num_classes, dtype=torch.float32, device=target.device).index_add_(0, target, m)
    n = m.sum()
    present = counts > 0
    freq = 1 / (torch.where(present, counts, torch.ones_like(counts)) / n)
    return torch.where(present, freq, torch.ones_like(counts))


def confidence_ce(weak: torch.Tensor, strong: torch.Tensor, threshold,
                  class_balancing: bool = False) -> torch.Tensor:
    """SCAN's ``ConfidenceBasedCE``: pseudo-label = argmax softmax(weak) (plain softmax), kept where its max
    probability > threshold; :func:`masked_cross_entropy` of ``strong`` on the kept samples (mean), 0 (with a
    graph) when nothing is kept. ``class_balancing`` (``apply_class_balancing``; the training step of the
    original passes False) weights each class by :func:`class_balancing_weights`."""
    prob = F.softmax(weak.detach(), dim=1)
    maxp, target = prob.max(dim=1)
    mask = maxp > threshold
    weight = class_balancing_weights(target, mask, prob.shape[1]) if class_balancing else None
    return masked_cross_entropy(strong, target, mask, weight)


def self_label_loss(student: Sequence[torch.Tensor], quantile: float, threshold: float = 0.0,
                    teacher: Optional[Sequence[torch.Tensor]] = None, tau: float = 1.0,
                    class_balancing: bool = False) -> Dict[str, torch.Tensor]:
    """Stage (c) on one rank's logits (no gather; every statistic is per GPU batch as in the original).

    The weak anchor of a sample is the global view (teacher's, if given) with the higher max probability of
    softmax(f / tau); the strong anchor is the student's *other* global view. The loss is
    [CE(strong) + sum over local views CE(local)] / (n - 1), each CE being :func:`confidence_ce` against the
    weak anchor with the quantile threshold of :func:`quantile_threshold` (``class_balancing`` is passed on;
    the original trains with False). No value is read back to the host.
    """
    src = teacher if teacher is not None else student[:2]
    p0, p1 = F.softmax(src[0] / tau, dim=-1), F.softmax(src[1] / tau, dim=-1)
    conf = confidence(p0, p1)
    thr = quantile_threshold(conf, quantile, threshold)
    frac = (conf > thr).float().mean()
    first = (p0.max(dim=1).values > p1.max(dim=1).values).unsqueeze(1)
    weak = torch.where(first, src[0], src[1]).detach()
    strong = torch.where(first, student[1], student[0])
    n = len(student)
    loss = confidence_ce(weak, strong, thr, class_balancing)
    for v in range(2, n):
        loss = loss + confidence_ce(weak, student[v], thr, class_balancing)
    return {"final": loss / (n - 1), "threshold": thr.detach(), "frac": frac}
