"""Core losses against independent NumPy computations."""
import numpy as np
import pytest
import torch

from core.losses import (align_loss, barlow_twins_loss, byol_mse, info_nce, neg_cosine, nt_xent,
                         uniform_loss, vicreg_loss)


def _np_normalize(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _np_logsumexp(a):
    m = a.max()
    return m + np.log(np.exp(a - m).sum())


@pytest.fixture
def pair():
    g = torch.Generator().manual_seed(0)
    return torch.randn(6, 5, generator=g, dtype=torch.float64), torch.randn(6, 5, generator=g, dtype=torch.float64)


def test_nt_xent_numpy(pair):
    z1, z2 = pair
    a, b = _np_normalize(z1.numpy()), _np_normalize(z2.numpy())
    z = np.concatenate([a, b])
    n, tau, total = len(a), 0.3, 0.0
    for i in range(2 * n):
        pos = (i + n) % (2 * n)
        logits = np.array([z[i] @ z[j] / tau for j in range(2 * n) if j != i])
        total += -(z[i] @ z[pos] / tau - _np_logsumexp(logits))
    assert float(nt_xent(z1, z2, tau=0.3)) == pytest.approx(total / (2 * n), rel=1e-10)


def test_info_nce_numpy(pair):
    q, k = torch.nn.functional.normalize(pair[0], dim=1), torch.nn.functional.normalize(pair[1], dim=1)
    queue = torch.nn.functional.normalize(torch.randn(7, 5, dtype=torch.float64), dim=1)
    qn, kn, un = q.numpy(), k.numpy(), queue.numpy()
    losses = [-(qn[i] @ kn[i] / 0.07 - _np_logsumexp(np.concatenate([[qn[i] @ kn[i]], un @ qn[i]]) / 0.07))
              for i in range(len(qn))]
    assert float(info_nce(q, k, queue, 0.07)) == pytest.approx(np.mean(losses), rel=1e-10)


def test_cosine_losses_and_stopgrad(pair):
    p, z = pair[0].clone().requires_grad_(), pair[1].clone().requires_grad_()
    cos = np.sum(_np_normalize(p.detach().numpy()) * _np_normalize(z.detach().numpy()), axis=1)
    assert float(neg_cosine(p, z)) == pytest.approx(-cos.mean(), rel=1e-10)
    loss = byol_mse(p, z)
    assert float(loss) == pytest.approx(np.mean(2 - 2 * cos), rel=1e-10)
    loss.backward()
    assert z.grad is None and p.grad is not None  # stop-gradient on the target


def test_barlow_twins_numpy(pair):
    z1, z2 = pair
    a, b = z1.numpy(), z2.numpy()
    an = (a - a.mean(0)) / np.sqrt(a.var(0) + 1e-5)
    bn = (b - b.mean(0)) / np.sqrt(b.var(0) + 1e-5)
    c = an.T @ bn / len(a)
    expect = sum((1 - c[i, i]) ** 2 for i in range(5)) + 0.0051 * sum(
        c[i, j] ** 2 for i in range(5) for j in range(5) if i != j)
    assert float(barlow_twins_loss(z1, z2, 0.0051)) == pytest.approx(expect, rel=1e-10)


def test_vicreg_numpy(pair):
    z1, z2 = pair
    a, b = z1.numpy(), z2.numpy()
    n, d = a.shape
    sim = np.mean((a - b) ** 2)
    std = lambda x: np.mean(np.maximum(0, 1 - np.sqrt(x.var(0, ddof=1) + 1e-4)))  # noqa: E731
    def cov(x):
        xc = x - x.mean(0)
        c = xc.T @ xc / (n - 1)
        return (np.sum(c ** 2) - np.sum(np.diag(c) ** 2)) / d
    expect = 25 * sim + 25 * (std(a) / 2 + std(b) / 2) + 1 * (cov(a) + cov(b))
    assert float(vicreg_loss(z1, z2)) == pytest.approx(expect, rel=1e-10)


def test_align_uniform_numpy(pair):
    x, y = torch.nn.functional.normalize(pair[0], dim=1), torch.nn.functional.normalize(pair[1], dim=1)
    xn, yn = x.numpy(), y.numpy()
    assert float(align_loss(x, y, 2)) == pytest.approx(np.mean(np.sum((xn - yn) ** 2, 1)), rel=1e-10)
    assert float(align_loss(x, y, 1)) == pytest.approx(np.mean(np.linalg.norm(xn - yn, axis=1)), rel=1e-10)
    d2 = [np.sum((xn[i] - xn[j]) ** 2) for i in range(6) for j in range(i + 1, 6)]
    assert float(uniform_loss(x, 2)) == pytest.approx(np.log(np.mean(np.exp(-2 * np.array(d2)))), rel=1e-10)


def _other_rank(x):
    """What a second rank would add to an all-gather in these tests: the same rows reversed, features rotated
    (row norms kept, so normalised inputs stay normalised)."""
    return np.concatenate([x, np.roll(x[::-1], 1, axis=1)])


@pytest.fixture
def two_ranks(monkeypatch):
    """Stand-in for a 2-process ``all_gather_grad``: appends :func:`_other_rank`'s rows."""
    import core.losses as L

    calls = []
    monkeypatch.setattr(L.dist, "all_gather_grad",
                        lambda x: calls.append(1) or torch.from_numpy(_other_rank(x.detach().numpy())))
    return calls


def _np_nt_xent(a, b, tau):
    z = np.concatenate([_np_normalize(a), _np_normalize(b)])
    n = len(a)
    out = [-(z[i] @ z[(i + n) % (2 * n)] / tau - _np_logsumexp(np.array(
        [z[i] @ z[j] / tau for j in range(2 * n) if j != i]))) for i in range(2 * n)]
    return np.mean(out)


def test_batch_statistics_are_global_by_default(pair, two_ranks):
    """nt_xent, Barlow Twins and VICReg gather by default (global batch, the papers' setting); the values are
    the NumPy formulas on the 12-row global batch (VICReg's invariance term stays per process, as the original)."""
    z1, z2 = pair
    a, b = z1.numpy(), z2.numpy()
    ga, gb = _other_rank(a), _other_rank(b)
    assert float(nt_xent(z1, z2)) == pytest.approx(_np_nt_xent(ga, gb, 0.2), rel=1e-10)  # default tau 0.2
    an = (ga - ga.mean(0)) / np.sqrt(ga.var(0) + 1e-5)
    bn = (gb - gb.mean(0)) / np.sqrt(gb.var(0) + 1e-5)
    c = an.T @ bn / len(ga)
    off = c - np.diag(np.diag(c))
    assert float(barlow_twins_loss(z1, z2)) == pytest.approx(  # defaults lambda 0.0051, eps 1e-5
        np.sum((1 - np.diag(c)) ** 2) + 0.0051 * np.sum(off ** 2), rel=1e-10)
    std = lambda x: np.mean(np.maximum(0, 1 - np.sqrt(x.var(0, ddof=1) + 1e-4)))  # noqa: E731
    cov = lambda x: (lambda m: (np.sum(m ** 2) - np.sum(np.diag(m) ** 2)) / 5)(  # noqa: E731
        (x - x.mean(0)).T @ (x - x.mean(0)) / (len(x) - 1))
    expect = 25 * np.mean((a - b) ** 2) + 25 * (std(ga) + std(gb)) / 2 + cov(ga) + cov(gb)
    assert float(vicreg_loss(z1, z2)) == pytest.approx(expect, rel=1e-10)
    assert len(two_ranks) == 6
    two_ranks.clear()
    nt_xent(z1, z2, gather=False), barlow_twins_loss(z1, z2, gather=False), vicreg_loss(z1, z2, gather=False)
    assert two_ranks == []


def test_loss_defaults_and_eps(pair):
    """Defaults of the originals: MoCo tau 0.07, alignment alpha 2, uniformity t 2; Barlow's eps reaches both
    views' BN."""
    q, k = torch.nn.functional.normalize(pair[0], dim=1), torch.nn.functional.normalize(pair[1], dim=1)
    queue = torch.nn.functional.normalize(torch.randn(7, 5, dtype=torch.float64), dim=1)
    assert float(info_nce(q, k, queue)) == pytest.approx(float(info_nce(q, k, queue, 0.07)), rel=1e-12)
    assert float(info_nce(q, k, queue)) != pytest.approx(float(info_nce(q, k, queue, 0.2)), rel=1e-3)
    qn, kn = q.numpy(), k.numpy()
    assert float(align_loss(q, k)) == pytest.approx(np.mean(np.sum((qn - kn) ** 2, 1)), rel=1e-10)
    d2 = np.array([np.sum((qn[i] - qn[j]) ** 2) for i in range(6) for j in range(i + 1, 6)])
    assert float(uniform_loss(q)) == pytest.approx(np.log(np.mean(np.exp(-2 * d2))), rel=1e-10)
    a, b = pair[0].numpy(), pair[1].numpy()
    eps = 0.7
    an, bn = (a - a.mean(0)) / np.sqrt(a.var(0) + eps), (b - b.mean(0)) / np.sqrt(b.var(0) + eps)
    c = an.T @ bn / 6
    expect = np.sum((1 - np.diag(c)) ** 2) + 0.0051 * (np.sum(c ** 2) - np.sum(np.diag(c) ** 2))
    assert float(barlow_twins_loss(pair[0], pair[1], gather=False, eps=eps)) == pytest.approx(expect, rel=1e-10)


@pytest.mark.parametrize("loss,name", [(barlow_twins_loss, "the Barlow Twins loss"), (vicreg_loss, "the VICReg loss")])
def test_batch_of_one_is_a_user_error_two_is_fine(loss, name):
    from core.errors import UserError

    z = torch.randn(2, 4, dtype=torch.float64)
    assert torch.isfinite(loss(z, z.flip(1), gather=False))  # 2 samples: a finite loss
    with pytest.raises(UserError) as e:
        loss(z[:1], z[:1], gather=False)
    assert str(e.value) == f"{name} needs a (global) batch of at least 2 samples, got 1"
