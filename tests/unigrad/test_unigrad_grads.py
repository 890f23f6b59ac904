"""Each gradient form against an independent computation: NumPy loops of the formula, or autograd of the
loss whose gradient the form is meant to be."""
import numpy as np
import torch
import torch.nn.functional as Fn

from unigrad_lib import grads


def unit(b, c, seed):
    g = torch.Generator().manual_seed(seed)
    return Fn.normalize(torch.randn(b, c, generator=g, dtype=torch.float64), dim=1)


def np_corr(t1, t2):
    t1, t2 = t1.numpy(), t2.numpy()
    out = np.zeros((t1.shape[1], t1.shape[1]))
    for i in range(t1.shape[0]):
        out += np.outer(t1[i], t1[i]) + np.outer(t2[i], t2[i])
    return out / (2 * t1.shape[0])


def test_surrogate_gradient_is_g_over_batch():
    u1, u2, g1, g2 = unit(6, 5, 0), unit(6, 5, 1), unit(6, 5, 2) * 3, unit(6, 5, 3)
    u1.requires_grad_(True)
    u2.requires_grad_(True)
    grads.symmetric_surrogate(g1, u1, g2, u2).backward()
    assert torch.allclose(u1.grad, g1 / 12) and torch.allclose(u2.grad, g2 / 12)


def test_batch_correlation_and_ema_match_numpy():
    rho = 0.9
    F = None
    F_np = None
    for step in range(4):
        t1, t2 = unit(8, 5, 10 + step), unit(8, 5, 20 + step)
        Fh = grads.batch_correlation(t1, t2)
        Fh_np = np_corr(t1, t2)
        assert np.allclose(Fh.numpy(), Fh_np)
        assert abs(np.trace(Fh_np) - 1.0) < 1e-12  # unit vectors: trace 1
        F = grads.ema_correlation(F, Fh, rho)
        F_np = Fh_np.copy() if F_np is None else rho * F_np + (1 - rho) * Fh_np
        assert np.allclose(F.numpy(), F_np)


def test_unigrad_grad_formula_and_readme_loss():
    u, m = unit(7, 6, 0), unit(7, 6, 1)
    F = torch.from_numpy(np_corr(unit(9, 6, 2), unit(9, 6, 3)))
    lam = 100.0
    g = grads.unigrad_grad(u, m, F, lam)
    want = np.stack([-m[i].numpy() + lam * F.numpy() @ u[i].numpy() for i in range(7)])
    assert np.allclose(g.numpy(), want)
    # README loss, F constant: L_i = -<u_i, m_i> + lambda/2 u_i^T F u_i  -> dL_i/du_i = g_i
    uu = u.clone().requires_grad_(True)
    L = (-(uu * m).sum(1) + lam / 2 * ((uu @ F) * uu).sum(1)).sum()
    L.backward()
    assert torch.allclose(uu.grad, g)


def test_contrastive_grad_is_infonce_gradient():
    B, C, tau = 5, 8, 0.2
    u, m1, m2 = unit(B, C, 0), unit(B, C, 1), unit(B, C, 2)
    keys = torch.cat([m1, m2])  # the original key set: both views, positive included, no mask
    g = grads.contrastive_grad(u, m2, keys, tau)
    uu = u.clone().requires_grad_(True)
    logits = uu @ keys.t() / tau
    Fn.cross_entropy(logits, torch.arange(B) + B, reduction="sum").backward()
    assert torch.allclose(uu.grad, g)
    # and the hand formula (1/tau)(-pos + sum_v s_v v)
    k = keys.numpy()
    for i in range(B):
        e = np.exp(k @ u[i].numpy() / tau)
        s = e / e.sum()
        assert np.allclose(g[i].numpy(), (-m2[i].numpy() + s @ k) / tau)


def test_moco_grad_is_infonce_gradient_with_queue():
    B, C, K, tau = 4, 6, 10, 0.2
    u, pos, queue = unit(B, C, 0), unit(B, C, 1), unit(K, C, 2)
    g = grads.moco_grad(u, pos, queue, tau)
    uu = u.clone().requires_grad_(True)
    logits = torch.cat([(uu * pos).sum(1, keepdim=True), uu @ queue.t()], 1) / tau
    Fn.cross_entropy(logits, torch.zeros(B, dtype=torch.long), reduction="sum").backward()
    assert torch.allclose(uu.grad, g)


def np_directpred(u, pos, F, eps):
    w, V = np.linalg.eigh(F)  # F symmetric PSD: SVD = eigendecomposition
    s_hat = w / w.max()
    d = np.maximum(np.sqrt(np.clip(s_hat, 0, None)) + eps, 1e-4)
    W = V @ np.diag(d) @ V.T
    A = F / w.max() + eps ** 2 * np.eye(F.shape[0])
    out = []
    for i in range(u.shape[0]):
        uw = u[i] @ W
        c = np.linalg.norm(uw)
        lam = (uw @ pos[i]) / (u[i] @ A @ u[i])
        out.append((-(pos[i] @ W) + lam * (u[i] @ A)) / c)
    return np.stack(out)


def test_directpred_grad_matches_numpy():
    u, m = unit(6, 5, 0), unit(6, 5, 1)
    F = torch.from_numpy(np_corr(unit(40, 5, 2), unit(40, 5, 3)))
    g = grads.directpred_grad(u, m, F, 0.3)
    assert np.allclose(g.numpy(), np_directpred(u.numpy(), m.numpy(), F.numpy(), 0.3), atol=1e-5)


def test_directpred_grad_eps0_is_byol_cosine_gradient():
    # with eps = 0, A = W_p^T W_p and the form is exactly d/du of -cos(u W_p, m)
    u, m = unit(6, 5, 0), unit(6, 5, 1)
    F = torch.from_numpy(np_corr(unit(40, 5, 2), unit(40, 5, 3)))
    g = grads.directpred_grad(u, m, F, 0.0)
    # W_p built here from F's eigendecomposition (F is symmetric PSD): V diag(max(sqrt(s / s_max), 1e-4)) V^T
    w, V = np.linalg.eigh(F.numpy())
    W = torch.from_numpy(V @ np.diag(np.maximum(np.sqrt(np.clip(w / w.max(), 0, None)), 1e-4)) @ V.T)
    uu = u.clone().requires_grad_(True)
    (-Fn.cosine_similarity(uu @ W, m, dim=1)).sum().backward()
    assert torch.allclose(uu.grad, g, atol=1e-5)


def test_barlow_twins_grad_matches_loop():
    B, C, lam, N = 5, 4, 50.0, 5
    pos, pos_bank, u_bank = unit(B, C, 0), unit(B, C, 0), unit(B, C, 1)
    g = grads.barlow_twins_grad(pos, pos_bank, u_bank, lam, N).numpy()
    for i in range(B):
        neg = sum(float(pos[i] @ pos_bank[j]) * u_bank[j].numpy() for j in range(B)) / N
        assert np.allclose(g[i], 2 * (-pos[i].numpy() + lam * neg))


def test_vicreg_grad_matches_loop_and_autograd():
    B, C, lam = 6, 4, 50.0
    u, pos, bank = unit(B, C, 0), unit(B, C, 1), unit(B, C, 2)
    mu = u.mean(0, keepdim=True)
    g = grads.vicreg_grad(u, pos, mu, bank, lam, B)
    b = bank.numpy() - bank.numpy().mean(0)
    for i in range(B):
        uc = u[i].numpy() - mu[0].numpy()
        neg = sum((uc @ b[j]) * b[j] for j in range(B)) / B
        assert np.allclose(g[i].numpy(), 2 * (-pos[i].numpy() + lam * neg))
    # gradient of 2 [-<u_i, pos_i> + lambda/(2N) sum_j <u_i - mu, v~_j>^2] with mu, v held constant
    uu = u.clone().requires_grad_(True)
    bc = torch.from_numpy(b)
    L = 2 * (-(uu * pos).sum(1) + lam / (2 * B) * (((uu - mu) @ bc.t()) ** 2).sum(1)).sum()
    L.backward()
    assert torch.allclose(uu.grad, g)


def test_forms_keep_the_feature_dtype_under_bf16_autocast_inputs():
    """Under AMP the features are bf16/fp16 while F stays fp32: each form returns the features' dtype and the
    value of its fp64 formula (softmax taken in fp32)."""
    u, m = unit(6, 5, 0), unit(6, 5, 1)
    keys, queue = unit(12, 5, 2), unit(7, 5, 3)
    F = torch.from_numpy(np_corr(unit(40, 5, 4), unit(40, 5, 5))).float()
    ref = {"unigrad": -m + 100 * (u @ F.double()),
           "simclr": (-m + torch.softmax(u @ keys.t() / 0.2, 1) @ keys) / 0.2}
    logits = torch.cat([(u * m).sum(1, keepdim=True), u @ queue.t()], 1) / 0.2
    s = torch.softmax(logits, 1)
    ref["moco"] = (-m + s[:, :1] * m + s[:, 1:] @ queue) / 0.2
    ub, mb, kb, qb = (x.to(torch.bfloat16) for x in (u, m, keys, queue))
    got = {"unigrad": grads.unigrad_grad(ub, mb, F, 100.0), "simclr": grads.contrastive_grad(ub, mb, kb, 0.2),
           "moco": grads.moco_grad(ub, mb, qb, 0.2)}
    for k, g in got.items():
        assert g.dtype == torch.bfloat16, k
        assert torch.allclose(g.double(), ref[k], rtol=0.05, atol=0.05 * ref[k].abs().max().item()), k


def test_batch_correlation_is_averaged_over_ranks_by_default(monkeypatch):
    """F_hat is all-reduced (mean over ranks) unless reduce=False; a stand-in all-reduce returns 3 F_hat."""
    t1, t2 = unit(6, 4, 0), unit(6, 4, 1)
    local = torch.from_numpy(np_corr(t1, t2))
    monkeypatch.setattr(grads.dist, "all_reduce_mean", lambda f: 3 * f)
    assert torch.allclose(grads.batch_correlation(t1, t2), 3 * local)
    assert torch.allclose(grads.batch_correlation(t1, t2, reduce=False), local)


def test_fp32_promotion_and_directpred_dtypes():
    """_f32: bf16 -> fp32, fp64 kept; DirectPred with an fp32 F returns the features' dtype (bf16 or fp64) and
    the fp64 formula's value; normalize is the row-wise L2 normalisation."""
    assert grads._f32(torch.ones(2, dtype=torch.bfloat16)).dtype == torch.float32
    assert grads._f32(torch.ones(2, dtype=torch.float64)).dtype == torch.float64
    u, m = unit(6, 5, 0), unit(6, 5, 1)
    F64 = np_corr(unit(40, 5, 2), unit(40, 5, 3))
    ref = torch.from_numpy(np_directpred(u.numpy(), m.numpy(), F64, 0.3))
    F32 = torch.from_numpy(F64).float()
    g64 = grads.directpred_grad(u, m, F32, 0.3)
    assert g64.dtype == torch.float64 and torch.allclose(g64, ref, atol=1e-4)
    g16 = grads.directpred_grad(u.to(torch.bfloat16), m.to(torch.bfloat16), F32, 0.3)
    assert g16.dtype == torch.bfloat16 and torch.allclose(g16.double(), ref, atol=0.05 * ref.abs().max().item())
    x = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
    assert torch.allclose(grads.normalize(x), torch.tensor([[0.6, 0.8], [0.0, 1.0]]))
