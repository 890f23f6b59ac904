"""The TWIST loss terms and gradients against an independent NumPy re-derivation (spec 3)."""
import math

import numpy as np
import pytest
import torch

from twist_lib import loss as L

EPS = 1e-5


def np_softmax(f):
    e = np.exp(f - f.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def np_pair(fa, fb, lam1, lam2, tau, eps=EPS):
    """formula.png written out per sample and class with explicit loops over the batch."""
    pa, pb = np_softmax(fa), np_softmax(fb)
    ta, tb = np_softmax(fa / tau), np_softmax(fb / tau)
    B = fa.shape[0]
    kl = 0.0
    for i in range(B):
        kl += np.sum(pa[i] * np.log(pa[i] + eps) - pa[i] * np.log(pb[i] + eps))
        kl += np.sum(pb[i] * np.log(pb[i] + eps) - pb[i] * np.log(pa[i] + eps))
    kl /= 2 * B
    eh = sum(-np.sum(t[i] * np.log(t[i] + eps)) for t in (ta, tb) for i in range(B)) / (2 * B)
    he = 0.0
    for t in (ta, tb):
        m = t.sum(0) / B
        he += -np.sum(m * np.log(m + eps)) / 2
    return kl, eh, he, kl + (1 + lam1) * eh - lam2 * he


def np_multicrop(views, lam1, lam2, tau):
    tot = np.zeros(4)
    pairs = [(0, 1)] + [(g, l) for g in (0, 1) for l in range(2, len(views))]
    for a, b in pairs:
        tot += np.array(np_pair(views[a], views[b], lam1, lam2, tau))
    return tot / len(pairs)


def test_uniform_logits_hand_values():
    # all-equal logits: p = 1/C for every sample -> kl = 0, eh = he = -log(1/C + eps)
    C = 4
    f = torch.zeros(3, C)
    out = L.twist_pair_loss(f, f.clone())
    h = -math.log(0.25 + EPS)
    assert out["kl"].item() == pytest.approx(0.0, abs=1e-7)
    assert out["eh"].item() == pytest.approx(h, rel=1e-6)
    assert out["he"].item() == pytest.approx(h, rel=1e-6)
    assert out["final"].item() == pytest.approx(0.0, abs=1e-6)


def test_one_hot_hand_values():
    # two samples, confident on different classes; view b swaps them
    big = 30.0
    fa = torch.tensor([[big, 0.0], [0.0, big]], dtype=torch.float64)
    fb = torch.tensor([[0.0, big], [big, 0.0]], dtype=torch.float64)
    out = L.twist_pair_loss(fa, fb, lam1=0.0, lam2=1.0)
    # p ~ one-hot: KL(p_a||p_b) ~ log(1+eps) - log(eps) per sample, EH ~ 0, HE ~ log 2 (mean = [.5, .5])
    kl_expected = math.log(1 + EPS) - math.log(EPS)
    assert out["kl"].item() == pytest.approx(kl_expected, rel=1e-3)
    assert out["eh"].item() == pytest.approx(0.0, abs=1e-3)
    assert out["he"].item() == pytest.approx(-math.log(0.5 + EPS), rel=1e-4)


@pytest.mark.parametrize("lam1,lam2,tau", [(0.0, 1.0, 1.0), (-0.6, 1.0, 1.0), (0.3, 0.7, 0.5)])
def test_pair_and_multicrop_match_numpy(lam1, lam2, tau):
    rng = np.random.default_rng(0)
    views = [rng.normal(size=(6, 5)) * 2 for _ in range(4)]
    got = L.twist_pair_loss(torch.tensor(views[0]), torch.tensor(views[1]), lam1, lam2, tau)
    ref = np_pair(views[0], views[1], lam1, lam2, tau)
    for k, r in zip(("kl", "eh", "he", "final"), ref):
        assert got[k].item() == pytest.approx(r, rel=1e-9, abs=1e-12)
    got = L.twist_multicrop_loss([torch.tensor(v) for v in views], lam1, lam2, tau)
    ref = np_multicrop(views, lam1, lam2, tau)
    for k, r in zip(("kl", "eh", "he", "final"), ref):
        assert got[k].item() == pytest.approx(r, rel=1e-9, abs=1e-12)


def test_crop_pairs_no_local_local():
    pairs = L.crop_pairs(2 + 3)
    assert pairs == [(0, 1), (0, 2), (0, 3), (0, 4), (1, 2), (1, 3), (1, 4)]
    assert len(L.crop_pairs(2 + 12)) == 25


def test_multicrop_gradient_matches_finite_differences_of_numpy_loss():
    rng = np.random.default_rng(1)
    views = [rng.normal(size=(4, 3)) for _ in range(3)]
    ts = [torch.tensor(v, requires_grad=True) for v in views]
    L.twist_multicrop_loss(ts, -0.6, 1.0, 0.7)["final"].backward()
    h = 1e-6
    for vi in range(3):
        num = np.zeros_like(views[vi])
        for idx in np.ndindex(*views[vi].shape):
            plus = [v.copy() for v in views]
            minus = [v.copy() for v in views]
            plus[vi][idx] += h
            minus[vi][idx] -= h
            num[idx] = (np_multicrop(plus, -0.6, 1.0, 0.7)[3] - np_multicrop(minus, -0.6, 1.0, 0.7)[3]) / (2 * h)
        np.testing.assert_allclose(ts[vi].grad.numpy(), num, rtol=1e-5, atol=1e-8)


def np_teacher(teacher, student, lam1, lam2, tau, eps=EPS):
    t = [np_softmax(x / tau) for x in teacher]
    s = [np_softmax(x / tau) for x in student]
    kls = []
    for i in range(2):
        for j in range(len(s)):
            if i != j:
                kls.append(np.mean(np.sum(t[i] * (np.log(t[i] + eps) - np.log(s[j] + eps)), 1)))
    eh = np.mean([np.mean(-np.sum(x * np.log(x + eps), 1)) for x in s])
    he = np.mean([-np.sum(x.mean(0) * np.log(x.mean(0) + eps)) for x in s])
    return np.mean(kls), eh, he, np.mean(kls) + (1 + lam1) * eh - lam2 * he, len(kls)


def test_teacher_loss_matches_numpy():
    rng = np.random.default_rng(2)
    teacher = [rng.normal(size=(5, 6)) for _ in range(2)]
    student = [rng.normal(size=(5, 6)) for _ in range(4)]
    got = L.twist_teacher_loss([torch.tensor(x) for x in teacher], [torch.tensor(x) for x in student],
                               -0.6, 1.0, 0.9)
    ref = np_teacher(teacher, student, -0.6, 1.0, 0.9)
    assert ref[4] == 2 * 4 - 2
    for k, r in zip(("kl", "eh", "he", "final"), ref):
        assert got[k].item() == pytest.approx(r, rel=1e-9)


def test_entropy_of_mean_equals_original_allreduce_form():
    # the original's HE on W ranks: S = sum_r m_r, HE = -sum S log(S + W eps); the logger reported
    # (HE + W log W) / W. That must equal our entropy of the global mean.
    rng = np.random.default_rng(3)
    W, B, C = 4, 3, 5
    p = np_softmax(rng.normal(size=(W * B, C)))
    S = sum(p[r * B:(r + 1) * B].mean(0) for r in range(W))
    he_orig = -np.sum(S * np.log(S + W * EPS))
    logged = (he_orig + W * math.log(W)) / W
    ours = L.entropy_of_mean(torch.tensor(p)).item()
    assert ours == pytest.approx(logged, rel=1e-10)
