"""End to end through SiameseNet: the gradient that reaches the normalised online features equals the form's
formula computed independently in NumPy from the recorded features; F's moving average; EMA update; schedules."""
import math
import os

import numpy as np
import pytest
import torch

from core.optim import ema_momentum, unigrad_lr
from unigrad_lib import grads
from unigrad_lib.config import load_config
from unigrad_lib.model import SiameseNet

CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "papers", "unigrad", "configs",
                      "unigrad.py")
TINY = ["arch=resnet_tiny", "projector_input_dim=128", "projector_hidden_dim=32", "projector_output_dim=16",
        "queue_size=24", "whole_batch_size=6"]
B = 6


def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def np_corr(a, b):
    return sum(np.outer(a[i], a[i]) + np.outer(b[i], b[i]) for i in range(len(a))) / (2 * len(a))


def np_directpred(u, pos, F, eps):
    w, V = np.linalg.eigh(F)
    d = np.maximum(np.sqrt(np.clip(w / w.max(), 0, None)) + eps, 1e-4)
    W = V @ np.diag(d) @ V.T
    A = F / w.max() + eps ** 2 * np.eye(len(F))
    return np.stack([(-(pos[i] @ W) + (u[i] @ W @ pos[i]) / (u[i] @ A @ u[i]) * (u[i] @ A))
                     / np.linalg.norm(u[i] @ W) for i in range(len(u))])


def expected(method, cfg, u, m_other, m_same, queue):
    """g for view-1 features u given the other view's targets and the same view's targets (NumPy)."""
    lam = cfg.get("lambd")
    if method == "unigrad":
        return np.stack([-m_other[i] + lam * np_corr(m_same, m_other) @ u[i] for i in range(B)])
    if method in ("simsiam", "byol"):
        return np_directpred(u, m_other, np_corr(m_same, m_other), cfg.eps)
    if method == "simclr":
        keys = np.concatenate([m_same, m_other])  # [M1; M2] in both directions: same set
        return np.stack([(-m_other[i] + softmax(keys @ u[i] / cfg.moco_t) @ keys) / cfg.moco_t for i in range(B)])
    if method == "moco":
        out = []
        for i in range(B):
            v = np.concatenate([m_other[i:i + 1], queue])
            out.append((-m_other[i] + softmax(v @ u[i] / cfg.moco_t) @ v) / cfg.moco_t)
        return np.stack(out)
    if method == "barlow_twins":
        return None  # needs the other view's online bank: checked separately
    if method == "vicreg":
        uc, bc = u - u.mean(0), m_same - m_same.mean(0)
        return np.stack([2 * (-m_other[i] + lam * sum((uc[i] @ bc[j]) * bc[j] for j in range(B)) / B)
                         for i in range(B)])


CASES = [(loss, form) for loss in ("loss_unigrad", "loss_simclr_grad_mm", "loss_moco_grad_mm",
                                   "loss_byol_directpred_grad", "loss_simsiam_directpred_grad_mm",
                                   "loss_vicreg_grad_mm", "loss_barlow_twins_grad_mm") for form in ("grad", "grad_mm")]


@pytest.mark.parametrize("loss,form", CASES)
def test_gradient_on_normalised_features(monkeypatch, loss, form):
    extra = {"loss_simclr_grad_mm": ["moco_t=0.2"], "loss_moco_grad_mm": ["moco_t=0.2"],
             "loss_vicreg_grad_mm": ["lambd=50"], "loss_barlow_twins_grad_mm": ["lambd=50"],
             "loss_byol_directpred_grad": ["eps=0.3"], "loss_simsiam_directpred_grad_mm": ["eps=0.3"]}
    cfg = load_config(CONFIG, TINY + [f"loss={loss}", f"form={form}"] + extra.get(loss, []))
    torch.manual_seed(0)
    model = SiameseNet(cfg).double()
    rec = []
    orig = grads.normalize

    def recording(x):
        y = orig(x)
        if y.requires_grad:
            y.retain_grad()
        rec.append(y)
        return y

    monkeypatch.setattr(grads, "normalize", recording)
    queue = model.queue.double().numpy().copy() if cfg.method == "moco" else None
    x1, x2 = torch.randn(B, 3, 32, 32, dtype=torch.float64), torch.randn(B, 3, 32, 32, dtype=torch.float64)
    loss_v, _ = model(([x1, x2], None))
    loss_v.backward()
    u1, u2, m1, m2 = rec[:4]
    U1, U2, M1, M2 = (t.detach().numpy() for t in (u1, u2, m1, m2))
    if form == "grad":  # targets = stop-gradient of the online features
        assert np.allclose(M1, U1) and np.allclose(M2, U2)
    if cfg.method == "barlow_twins":
        g1 = np.stack([2 * (-M2[i] + 50 * sum((M2[i] @ M2[j]) * U1[j] for j in range(B)) / B) for i in range(B)])
        g2 = np.stack([2 * (-M1[i] + 50 * sum((M1[i] @ M1[j]) * U2[j] for j in range(B)) / B) for i in range(B)])
    else:
        g1 = expected(cfg.method, cfg, U1, M2, M1, queue)
        g2 = expected(cfg.method, cfg, U2, M1, M2, queue)
    # symmetric surrogate: d loss / d u = g / (2B)
    assert np.allclose(u1.grad.numpy(), g1 / (2 * B), atol=1e-8)
    assert np.allclose(u2.grad.numpy(), g2 / (2 * B), atol=1e-8)


def test_cutmix_gradient(monkeypatch):
    """UniGrad + CutMix: g1 = -(a v2_i + (1 - a) v2_perm(i)) + lambda F u1, F from the clean targets."""
    import unigrad_lib.model as M
    cfg = load_config(CONFIG, TINY + ["cutmix=true"])
    torch.manual_seed(0)
    model = SiameseNet(cfg).double()
    rec, mixes = [], []
    orig, orig_mix = grads.normalize, M.cutmix

    def recording(x):
        y = orig(x)
        if y.requires_grad:
            y.retain_grad()
        rec.append(y)
        return y

    def mix(x, perm, alpha):
        out, a = orig_mix(x, perm, alpha)
        mixes.append((perm.clone(), float(a)))
        return out, a

    monkeypatch.setattr(grads, "normalize", recording)
    monkeypatch.setattr(M, "cutmix", mix)
    x = [torch.randn(B, 3, 32, 32, dtype=torch.float64) for _ in range(2)]
    model(x)[0].backward()
    u1, u2, m1, m2 = rec[:4]
    U1, M1, M2 = u1.detach().numpy(), m1.numpy(), m2.numpy()
    (perm, a1), _ = mixes
    assert 0.0 <= a1 <= 1.0
    F = np_corr(M1, M2)
    pos = a1 * M2 + (1 - a1) * M2[perm.numpy()]
    g1 = np.stack([-pos[i] + cfg.lambd * F @ U1[i] for i in range(B)])
    assert np.allclose(u1.grad.numpy(), g1 / (2 * B), atol=1e-8)


def test_F_moving_average_over_steps(monkeypatch):
    cfg = load_config(CONFIG, TINY + ["rho=0.9"])
    torch.manual_seed(1)
    model = SiameseNet(cfg).double()
    rec = []
    orig = grads.normalize
    monkeypatch.setattr(grads, "normalize", lambda x: rec.append(orig(x)) or rec[-1])
    F_np = None
    for step in range(3):
        rec.clear()
        x = [torch.randn(B, 3, 32, 32, dtype=torch.float64) for _ in range(2)]
        model(x)[0].backward()
        m1, m2 = rec[2].numpy(), rec[3].numpy()
        Fh = np_corr(m1, m2)
        F_np = Fh if F_np is None else 0.9 * F_np + 0.1 * Fh
        assert np.allclose(model.F.numpy(), F_np)
    assert int(model.F_count) == 3


def test_momentum_update_rule():
    cfg = load_config(CONFIG, TINY)
    model = SiameseNet(cfg)
    with torch.no_grad():
        for p in model.momentum_encoder.parameters():
            p.add_(1.0)
    before = [p.clone() for p in model.momentum_encoder.parameters()]
    online = [p.clone() for p in model.encoder.parameters()]
    model.momentum_update(0.99)
    for b, o, a in zip(before, online, model.momentum_encoder.parameters()):
        assert torch.allclose(a, 0.99 * b + 0.01 * o)


def test_schedules_match_spec_numbers():
    # spec 5.5/5.6: ImageNet, 8 GPUs: 1251 it/epoch, 100 epochs, 5 warm-up epochs, init lr 0.2
    T, Tw, lr = 125100, 6255, 0.2
    assert math.isclose(unigrad_lr(0, T, Tw, lr), 2e-4)
    assert math.isclose(unigrad_lr(Tw // 2, T, Tw, lr), (0.2 - 2e-4) * (Tw // 2) / Tw + 2e-4)
    assert abs(unigrad_lr(T - 1, T, Tw, lr) - 1.43e-3) < 1e-5
    assert abs(unigrad_lr(T // 2, T, Tw, lr) - 0.116) < 1e-3
    assert math.isclose(ema_momentum(0.996, 0, T), 0.996)
    assert math.isclose(ema_momentum(0.996, T, T), 1.0)
    assert math.isclose(ema_momentum(0.996, T // 2, T), 1 - 0.004 * (math.cos(math.pi * (T // 2) / T) + 1) / 2)
