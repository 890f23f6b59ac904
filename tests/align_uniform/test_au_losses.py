"""Each loss term of au_lib.losses against an independent NumPy computation (float64)."""
import math

import numpy as np
import pytest
import torch

from au_lib import losses as L


def _unit(rng, n, d):
    x = rng.standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _t(x):
    return torch.tensor(x, dtype=torch.float64)


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    q, k = _unit(rng, 6, 5), _unit(rng, 6, 5)
    queue = _unit(rng, 11, 5).T  # (d, K), unit columns
    return q, k, queue


@pytest.mark.parametrize("alpha", [2.0, 1.0, 3.0, 0.5])
def test_align_three_paths_match_numpy(data, alpha):
    q, k, _ = data
    ref = np.mean(np.linalg.norm(q - k, axis=1) ** alpha)
    got = L.align_term(_t(q), _t(k), alpha).item()
    assert got == pytest.approx(ref, rel=1e-10, abs=1e-12)


def test_align_alpha2_is_two_minus_two_cos(data):
    q, k, _ = data
    ref = 2 - 2 * np.mean(np.sum(q * k, axis=1))
    assert L.align_term(_t(q), _t(k), 2).item() == pytest.approx(ref, rel=1e-12)


def test_align_other_alpha_identical_vectors_is_zero_not_nan():
    q = torch.nn.functional.normalize(torch.randn(4, 7), dim=1)
    v = L.align_term(q, q.clone(), 3.0)
    assert torch.isfinite(v) and v.item() == pytest.approx(0.0, abs=1e-6)


def _np_uniform(q, queue, t, intra):
    d = [np.sum((qi - uj) ** 2) for qi in q for uj in queue.T]  # exact squared distances (no 2-2q.u shortcut)
    if intra:
        n = q.shape[0]
        d += [np.sum((q[i] - q[j]) ** 2) for i in range(n) for j in range(i + 1, n)]
    d = np.asarray(d)
    return np.log(np.mean(np.exp(-t * d))), d.size


@pytest.mark.parametrize("t", [2.0, 3.0])
def test_uniform_eq17_queue_only(data, t):
    q, _, queue = data
    ref, n = _np_uniform(q, queue, t, intra=False)
    assert n == 6 * 11
    assert L.uniform_term(_t(q), _t(queue), t, intra_batch=False).item() == pytest.approx(ref, rel=1e-10)


@pytest.mark.parametrize("t", [2.0, 3.0])
def test_uniform_eq18_pools_intra_batch_pairs_into_one_mean(data, t):
    q, _, queue = data
    ref, n = _np_uniform(q, queue, t, intra=True)
    assert n == 6 * 11 + 15
    got = L.uniform_term(_t(q), _t(queue), t, intra_batch=True).item()
    assert got == pytest.approx(ref, rel=1e-10)
    # pooled mean differs from the mean of the two separate log-means
    q17, _ = _np_uniform(q, queue, t, intra=False)
    assert abs(got - q17) > 1e-6


def test_uniform_gradient_matches_autograd_of_defining_loss(data):
    q, _, queue = data
    qa = _t(q).requires_grad_(True)
    qb = _t(q).requires_grad_(True)
    U = _t(queue)
    L.uniform_term(qa, U, 3.0, intra_batch=True).backward()
    # defining loss: naive double loops, exact squared distances, exp -> mean -> log
    terms = [torch.exp(-3.0 * ((qb[i] - U[:, j]) ** 2).sum()) for i in range(6) for j in range(11)]
    terms += [torch.exp(-3.0 * ((qb[i] - qb[j]) ** 2).sum()) for i in range(6) for j in range(i + 1, 6)]
    torch.log(torch.stack(terms).mean()).backward()
    # 2 - 2 q.u equals ||q - u||^2 only ON the sphere; compare gradients projected to the tangent space
    def tangent(g, x):
        return g - (g * x).sum(1, keepdim=True) * x
    np.testing.assert_allclose(tangent(qa.grad, qa.detach()).numpy(), tangent(qb.grad, qb.detach()).numpy(),
                               rtol=1e-8, atol=1e-10)
    assert qa.grad.abs().sum() > 0


def test_uniform_intra_batch_gradient_exact(data):
    # intra-batch part alone (no queue): both endpoints receive gradient, identical to naive loss
    q, _, _ = data
    qa = _t(q).requires_grad_(True)
    qb = _t(q).requires_grad_(True)
    empty = torch.zeros(5, 0, dtype=torch.float64)
    L.uniform_term(qa, empty, 2.0, intra_batch=True).backward()
    terms = [torch.exp(-2.0 * ((qb[i] - qb[j]) ** 2).sum()) for i in range(6) for j in range(i + 1, 6)]
    torch.log(torch.stack(terms).mean()).backward()
    np.testing.assert_allclose(qa.grad.numpy(), qb.grad.numpy(), rtol=1e-8, atol=1e-12)


def test_log_mean_exp_stable_and_identical_for_normalised_inputs():
    x = -torch.rand(1000, dtype=torch.float64) * 12  # -t d^2 range of normalised inputs at t=3
    naive = torch.log(torch.exp(x).mean())
    assert L.log_mean_exp(x).item() == pytest.approx(naive.item(), rel=1e-12)
    far = torch.tensor([-2000.0, -2001.0, -2003.0], dtype=torch.float64)  # unnormalised features: naive underflows to log(0)
    assert torch.isinf(torch.log(torch.exp(far).mean()))
    ref = -2000.0 + math.log((1 + math.exp(-1) + math.exp(-3)) / 3)
    assert L.log_mean_exp(far).item() == pytest.approx(ref, rel=1e-12)


def test_uniform_random_unit_vectors_close_to_analytic():
    # for uniform points on S^{d-1}: log E exp(-t||x-y||^2) ~ -2t + 2t^2/d (issue align_uniform#1)
    g = torch.Generator().manual_seed(0)
    d, t = 128, 2.0
    q = torch.nn.functional.normalize(torch.randn(256, d, generator=g, dtype=torch.float64), dim=1)
    queue = torch.nn.functional.normalize(torch.randn(d, 4096, generator=g, dtype=torch.float64), dim=0)
    expected = -2 * t + 2 * t * t / d
    for intra in (False, True):
        assert L.uniform_term(q, queue, t, intra_batch=intra).item() == pytest.approx(expected, abs=0.03)


def test_contrastive_positive_in_column_zero(data):
    q, k, queue = data
    tau = 0.2
    pos = np.sum(q * k, axis=1) / tau
    neg = q @ queue / tau
    logits = np.concatenate([pos[:, None], neg], axis=1)
    m = logits.max(1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(logits - m).sum(1))
    ref = np.mean(lse - pos)
    qk, qu = L.positive_sims(_t(q), _t(k)), L.queue_sims(_t(q), _t(queue))
    loss, lg = L.contrastive_term(qk, qu, tau)
    assert loss.item() == pytest.approx(ref, rel=1e-10)
    assert lg.shape == (6, 12)
    np.testing.assert_allclose(lg.numpy(), logits, rtol=1e-12)


def test_combine_weights_and_zero_weight_skips_term():
    a, u, c = torch.tensor(0.5), torch.tensor(-3.0), torch.tensor(2.0)
    assert L.MoCoLosses(None, None, a, u).combine(0, 3, 1).item() == pytest.approx(3 * 0.5 - 3.0)
    assert L.MoCoLosses(c, None, a, u).combine(2, 0, 0).item() == pytest.approx(4.0)
    with pytest.raises(ValueError):
        L.MoCoLosses(None, None, a, u).combine(1, 3, 1)  # contrastive weighted but not computed
    with pytest.raises(ValueError):
        L.MoCoLosses(c, None, a, u).combine(0, 0, 0)


def test_reference_losses_match_numpy(data):
    q, k, _ = data
    for alpha in (1.0, 2.0, 3.0):
        ref = np.mean(np.linalg.norm(q - k, axis=1) ** alpha)
        assert L.align_loss(_t(q), _t(k), alpha).item() == pytest.approx(ref, rel=1e-9)
    t = 2.0
    pairs = [np.sum((q[i] - q[j]) ** 2) for i in range(6) for j in range(i + 1, 6)]
    ref = np.log(np.mean(np.exp(-t * np.asarray(pairs))))
    assert L.uniform_loss(_t(q), t).item() == pytest.approx(ref, rel=1e-9)


def test_combine_weights_defaults_and_errors():
    """combine: w_c L_contr + w_a L_align + w_u L_unif with default weights 1; a zero weight skips its term (even
    an uncomputed one); a weighted term that was not computed, or all weights zero, is an error."""
    c, a, u = torch.tensor(2.0), torch.tensor(3.0), torch.tensor(-5.0)
    assert L.MoCoLosses(c, None, a, u).combine().item() == 0.0  # 2 + 3 - 5
    assert L.MoCoLosses(c, None, a, u).combine(0.5, 2.0, 0.1).item() == pytest.approx(1 + 6 - 0.5)
    assert L.MoCoLosses(None, None, a, None).combine(0, 4, 0).item() == 12.0
    with pytest.raises(ValueError, match="^the uniform loss has weight 2 but was not computed$"):
        L.MoCoLosses(c, None, a, None).combine(1, 1, 2)
    with pytest.raises(ValueError, match="^all loss weights are zero: nothing to optimise$"):
        L.MoCoLosses(c, None, a, u).combine(0, 0, 0)


def test_log_mean_exp_single_and_empty_and_uniform_default(data):
    assert L.log_mean_exp(torch.tensor([0.7], dtype=torch.float64)).item() == pytest.approx(0.7, rel=1e-12)
    with pytest.raises(ValueError, match=r"^log_mean_exp of an empty tensor \(uniformity needs at least one pair\)$"):
        L.log_mean_exp(torch.zeros(0))
    q, _, queue = data
    # eq. 18 (intra-batch pairs pooled in) is the default
    assert L.uniform_term(_t(q), _t(queue), 2.0).item() == L.uniform_term(_t(q), _t(queue), 2.0, intra_batch=True).item()
    assert L.uniform_term(_t(q), _t(queue), 2.0).item() != pytest.approx(
        L.uniform_term(_t(q), _t(queue), 2.0, intra_batch=False).item(), rel=1e-6)
