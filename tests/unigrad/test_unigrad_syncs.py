"""The training step of SiameseNet reads nothing back to the host (issue #13.5), DirectPred takes one SVD of F
per step (#13.6), and the sync-free pieces (F's first step, the queue pointer, CutMix, the diagnostics) compute
what their definitions say."""
import os

import numpy as np
import pytest
import torch

from core.engine.syncs import count_host_syncs
from core.eval import diagnostics as D
from unigrad_lib import grads
from unigrad_lib import model as M
from unigrad_lib.config import LOSS_NAMES, load_config
from unigrad_lib.model import SiameseNet

CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "papers", "unigrad", "configs",
                      "unigrad.py")
TINY = ["arch=resnet_tiny", "projector_input_dim=128", "projector_hidden_dim=16", "projector_output_dim=16",
        "queue_size=32", "lambd=1.0", "rho=0.9", "eps=0.3", "moco_t=0.2", "whole_batch_size=8"]
CASES = [(name, []) for name in sorted(LOSS_NAMES)] + [("loss_unigrad", ["cutmix=true"])]


@pytest.mark.parametrize("name,extra", CASES, ids=[n + ("+cutmix" if e else "") for n, e in CASES])
def test_no_host_reads_in_forward_and_backward(name, extra):
    """Two steps (F's first step and a moving-average step), diagnostics computed at both (diag_freq=1)."""
    cfg = load_config(CONFIG, TINY + [f"loss={name}", "diag_freq=1"] + extra)
    torch.manual_seed(0)
    model = SiameseNet(cfg)
    for _ in range(2):
        x = [torch.randn(8, 3, 16, 16) for _ in range(2)]
        with count_host_syncs() as c:
            loss, logs = model(x)
            loss.backward()
        assert c.count == 0, c.where
    assert {"eff_rank", "align", "uniform", "view_sim"} <= set(logs)


def test_directpred_one_svd_per_step_same_values(monkeypatch):
    """One SVD of F per step (as the original), and the gradients equal the per-view computation bitwise."""
    cfg = load_config(CONFIG, TINY + ["loss=loss_byol_directpred_grad", "diag_freq=0"])
    torch.manual_seed(0)
    model = SiameseNet(cfg)
    calls, real_svd = [], torch.linalg.svd

    def counting_svd(*a, **k):
        calls.append(a[0].shape)
        return real_svd(*a, **k)

    monkeypatch.setattr(torch.linalg, "svd", counting_svd)
    model([torch.randn(8, 3, 16, 16) for _ in range(2)])[0].backward()
    assert calls == [torch.Size([16, 16])]
    monkeypatch.setattr(torch.linalg, "svd", real_svd)

    g = torch.Generator().manual_seed(3)
    Z = torch.randn(64, 16, generator=g, dtype=torch.float64)
    F = grads.batch_correlation(Z[:32], Z[32:], reduce=False)  # full rank, well conditioned
    u1, u2, m1, m2 = (grads.normalize(torch.randn(8, 16, generator=g, dtype=torch.float64)) for _ in range(4))
    shared = grads.directpred_matrices(F, 0.3)
    for u, m in ((u1, m2), (u2, m1)):
        assert torch.equal(grads.directpred_grad(u, m, F, 0.3, matrices=shared), grads.directpred_grad(u, m, F, 0.3))


def test_F_first_step_is_F_hat_then_moving_average():
    cfg = load_config(CONFIG, TINY + ["rho=0.75"])
    model = SiameseNet(cfg).double()
    g = torch.Generator().manual_seed(1)
    a, b, c, d = (grads.normalize(torch.randn(8, 16, generator=g, dtype=torch.float64)) for _ in range(4))
    model.update_F(a, b)
    f1 = (a.T @ a + b.T @ b).numpy() / 16
    assert np.allclose(model.F.numpy(), f1, rtol=0, atol=1e-15)
    model.update_F(c, d)
    f2 = 0.75 * f1 + 0.25 * (c.T @ c + d.T @ d).numpy() / 16
    assert np.allclose(model.F.numpy(), f2, rtol=0, atol=1e-15) and int(model.F_count) == 2


def test_queue_pointer_on_device_wraps_around():
    cfg = load_config(CONFIG, TINY + ["loss=loss_moco_grad", "queue_size=5"])
    model = SiameseNet(cfg)
    q0 = model.queue.clone()
    k1, k2 = torch.full((3, 16), 1.0), torch.full((3, 16), 2.0)
    model.enqueue(k1)
    assert int(model.queue_ptr) == 3 and torch.equal(model.queue[:3], k1) and torch.equal(model.queue[3:], q0[3:])
    model.enqueue(k2)  # rows 3, 4, 0
    assert int(model.queue_ptr) == 1
    assert torch.equal(model.queue[[3, 4, 0]], k2) and torch.equal(model.queue[1:3], k1[:2])


@pytest.mark.parametrize("alpha", [1.0, 0.0, 0.3])
def test_cutmix_pastes_one_clipped_box(alpha):
    """The mixed pixels form one rectangle taken from x[perm]; a = 1 - (box area) / (h w); alpha = 0 gives
    lam = 0.5, i.e. a box side of int(h * sqrt(0.5)) before clipping."""
    torch.manual_seed(5)
    h, w = 12, 10
    for _ in range(20):
        x = torch.arange(4, dtype=torch.float32)[:, None, None, None].expand(4, 3, h, w).clone()
        perm = torch.tensor([1, 2, 3, 0])
        out, a = M.cutmix(x, perm, alpha)
        mixed = (out != x)[0, 0]
        assert torch.equal(out[:, :, mixed], x[perm][:, :, mixed]) and torch.equal(out[:, :, ~mixed], x[:, :, ~mixed])
        rows, cols = mixed.any(1).nonzero().flatten(), mixed.any(0).nonzero().flatten()
        if len(rows):
            r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
            assert bool(mixed[r0:r1, c0:c1].all()) and int(mixed.sum()) == (r1 - r0) * (c1 - c0)
            if alpha == 0.0:
                assert r1 - r0 <= 2 * (int(h * 0.5 ** 0.5) // 2) and c1 - c0 <= 2 * (int(w * 0.5 ** 0.5) // 2)
        assert abs(float(a) - (1 - int(mixed.sum()) / (h * w))) < 1e-7


def test_diagnostics_equal_core_definitions():
    g = torch.Generator().manual_seed(2)
    u1, u2 = torch.randn(16, 8, generator=g), torch.randn(16, 8, generator=g)
    got = SiameseNet.diagnostics(u1, u2)
    both = torch.cat([u1, u2])
    want = {"eff_rank": D.effective_rank(both), "align": D.alignment(u1, u2), "uniform": D.uniformity(both),
            "view_sim": D.positive_similarity(u1, u2)}
    for k, v in want.items():
        assert torch.is_tensor(got[k]) and abs(float(got[k]) - v) < 1e-5 * max(1.0, abs(v)), k
