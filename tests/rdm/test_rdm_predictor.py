"""The RDM spectral filters against an independent float64 NumPy computation (spec §2a-2c)."""
import itertools

import numpy as np
import pytest
import torch

from rdm_lib.predictor import (PRED_TYPES, apply_imagenet, apply_solo, online_filter_imagenet,
                               online_filter_solo, target_filter_imagenet)

SIGMAS = (-1.0, -0.5, 0.0, 0.5, 1.0, 2.0)
# (N, D): batch < dim (SVD branch) and batch >= dim (eigh branch of the ImageNet variant)
SHAPES = ((8, 20), (40, 12))


def f_np(s, pred_type, sigma):
    return {"poly": lambda: s ** sigma, "log": lambda: np.log(s), "log_1": lambda: np.log1p(s),
            "log_2": lambda: np.log1p(s ** 2)}[pred_type]()


def well_conditioned(n, d, seed):
    """Random matrix with singular values spread in [0.5, 3] (never near zero)."""
    rng = np.random.default_rng(seed)
    k = min(n, d)
    u, _ = np.linalg.qr(rng.standard_normal((n, k)))
    v, _ = np.linalg.qr(rng.standard_normal((d, k)))
    s = np.linspace(3.0, 0.5, k)
    return (u * s) @ v.T


def ref_online(p, pred_type, sigma):
    """p @ V diag(f(s)) V^T  ==  U diag(s f(s)) V^T (same for both variants)."""
    u, s, vh = np.linalg.svd(p, full_matrices=False)
    return (u * (s * f_np(s, pred_type, sigma))) @ vh


def ref_target_solo(z, sigma):
    u, s, vh = np.linalg.svd(z, full_matrices=False)
    return (u * s ** (1 + sigma)) @ vh


def ref_target_imagenet(p, z, sigma):
    _, s, vh = np.linalg.svd(p, full_matrices=False)
    return z @ (vh.T * s ** sigma) @ vh


def t32(a):
    return torch.tensor(a, dtype=torch.float32)


CASES = list(itertools.product(PRED_TYPES, ("online", "target"), SIGMAS, SHAPES))


@pytest.mark.parametrize("pred_type,location,sigma,shape", CASES)
@pytest.mark.parametrize("variant", ("solo", "imagenet"))
def test_filter_matches_numpy(variant, pred_type, location, sigma, shape):
    n, d = shape
    p, z = well_conditioned(n, d, 0), well_conditioned(n, d, 1)
    apply = apply_solo if variant == "solo" else apply_imagenet
    p_out, z_out = apply(t32(p), t32(z), pred_type, location, sigma)
    if location == "online":
        want_p, want_z = ref_online(p, pred_type, sigma), z
    else:  # pred_type is ignored in the target branch of both variants
        want_p = p
        want_z = ref_target_solo(z, sigma) if variant == "solo" else ref_target_imagenet(p, z, sigma)
    scale = max(1.0, np.abs(want_p).max(), np.abs(want_z).max())
    np.testing.assert_allclose(p_out.numpy(), want_p, atol=2e-5 * scale, rtol=1e-4)
    np.testing.assert_allclose(z_out.numpy(), want_z, atol=2e-5 * scale, rtol=1e-4)


def test_target_branch_ignores_pred_type():
    p, z = t32(well_conditioned(8, 20, 0)), t32(well_conditioned(8, 20, 1))
    outs = [apply_solo(p, z, t, "target", -1.0)[1] for t in PRED_TYPES]
    assert all(torch.equal(outs[0], o) for o in outs[1:])


def test_solo_target_sigma_minus_one_sets_singular_values_to_one():
    z = t32(well_conditioned(8, 20, 3))
    _, zt = apply_solo(z, z, "poly", "target", -1.0)
    s = np.linalg.svd(zt.numpy().astype(np.float64), compute_uv=False)
    np.testing.assert_allclose(s, np.ones(8), atol=1e-5)


@pytest.mark.parametrize("variant,location", [("solo", "online"), ("imagenet", "online"),
                                              ("imagenet", "target")])
def test_gradient_flows_through_constant_filter(variant, location):
    """d/dp sum(G * (p @ W)) = G @ W^T with W the NumPy filter: no gradient through W itself."""
    n, d = 8, 20
    p_np, g_np = well_conditioned(n, d, 5), np.random.default_rng(6).standard_normal((n, d))
    p = t32(p_np).requires_grad_(True)
    z = t32(well_conditioned(n, d, 7)).requires_grad_(True)
    apply = apply_solo if variant == "solo" else apply_imagenet
    p_out, z_out = apply(p, z, "poly", location, 1.0)
    assert not z_out.requires_grad or z_out is z
    (p_out * t32(g_np)).sum().backward()
    if location == "online":
        _, s, vh = np.linalg.svd(p_np, full_matrices=False)
        w = (vh.T * s) @ vh  # sigma = 1
        want = g_np @ w.T
    else:
        want = g_np  # no predictor on the online side
    np.testing.assert_allclose(p.grad.numpy(), want, atol=1e-4, rtol=1e-4)
    assert z.grad is None


def test_solo_target_has_no_gradient():
    z = t32(well_conditioned(8, 20, 1)).requires_grad_(True)
    p = t32(well_conditioned(8, 20, 0)).requires_grad_(True)
    _, z_out = apply_solo(p, z, "poly", "target", 1.0)
    assert not z_out.requires_grad


@pytest.mark.parametrize("fn,args", [(online_filter_solo, ("log", 1.0)), (online_filter_solo, ("poly", -1.0)),
                                     (online_filter_imagenet, ("log", 1.0)),
                                     (online_filter_imagenet, ("poly", -0.5)),
                                     (target_filter_imagenet, (-1.0,))])
@pytest.mark.parametrize("shape", SHAPES)
def test_guard_is_bit_identical_on_well_conditioned_inputs(fn, args, shape):
    p = t32(well_conditioned(*shape, 9))
    assert torch.equal(fn(p, *args, guard=True), fn(p, *args, guard=False))


def rank_deficient(n, d, r, seed):
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((n, r)))
    v, _ = np.linalg.qr(rng.standard_normal((d, r)))
    return (u * np.linspace(2.0, 1.0, r)) @ v.T


@pytest.mark.parametrize("pred_type,sigma", [("log", 0.0), ("poly", -1.0), ("poly", -0.5)])
@pytest.mark.parametrize("shape", SHAPES)
def test_guard_drops_null_directions(pred_type, sigma, shape):
    """On a rank-r matrix the guarded filter equals the NumPy filter on its r nonzero singular triplets,
    while the unguarded original is not finite or blows up."""
    n, d = shape
    r = min(n, d) - 3
    p = rank_deficient(n, d, r, 11)
    u, s, vh = np.linalg.svd(p, full_matrices=False)
    u, s, vh = u[:, :r], s[:r], vh[:r]
    w_ref = (vh.T * f_np(s, pred_type, sigma)) @ vh
    for fn in (online_filter_imagenet,) + ((online_filter_solo,) if n < d else ()):
        w = fn(t32(p), pred_type, sigma, guard=True)
        np.testing.assert_allclose(w.numpy(), w_ref, atol=1e-3 * np.abs(w_ref).max())
        w_raw = fn(t32(p), pred_type, sigma, guard=False)
        assert (not torch.isfinite(w_raw).all()) or np.abs(w_raw.numpy() - w_ref).max() > 3 * np.abs(w_ref).max()


def test_guard_imagenet_target_negative_sigma():
    n, d = 8, 20
    p, z = rank_deficient(n, d, 5, 12), well_conditioned(n, d, 13)
    u, s, vh = np.linalg.svd(p, full_matrices=False)
    want = z @ (vh[:5].T * s[:5] ** -1.0) @ vh[:5]
    _, got = apply_imagenet(t32(p), t32(z), "poly", "target", -1.0, guard=True)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-3 * np.abs(want).max())
    _, raw = apply_imagenet(t32(p), t32(z), "poly", "target", -1.0, guard=False)
    assert (not torch.isfinite(raw).all()) or np.abs(raw.numpy() - want).max() > 3 * np.abs(want).max()


def test_eigh_branch_negative_eigenvalues_guarded():
    """batch >= dim with a rank-deficient p: eigh(p^T p) returns ~0 (possibly negative) eigenvalues; the
    guarded filter stays finite for every type."""
    p = t32(rank_deficient(40, 12, 6, 14))
    for t in PRED_TYPES:
        assert torch.isfinite(online_filter_imagenet(p, t, -1.0, guard=True)).all()


def test_guard_solo_target_sigma_minus_one_drops_noise_direction():
    """Centred z with N < D has rank N-1; s^(1+sigma) = s^0 = 1 would give the round-off singular pair full
    weight. Guarded: U_r V_r^T on the r nonzero triplets (NumPy); unguarded: one extra unit singular value."""
    n, d = 8, 20
    z = well_conditioned(n, d, 21)
    z = z - z.mean(0)
    u, s, vh = np.linalg.svd(z, full_matrices=False)
    want = u[:, :n - 1] @ vh[:n - 1]
    _, got = apply_solo(t32(z), t32(z), "poly", "target", -1.0, guard=True)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5)
    _, raw = apply_solo(t32(z), t32(z), "poly", "target", -1.0, guard=False)
    s_raw = np.linalg.svd(raw.numpy().astype(np.float64), compute_uv=False)
    np.testing.assert_allclose(s_raw, np.ones(n), atol=1e-4)  # the original: n unit singular values
