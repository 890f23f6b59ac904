"""Rank diagnostics: effective ranks of the online / target outputs against a NumPy Roy-Vetterli erank."""
import os
import types

import numpy as np
import pytest
import torch

from rdm_lib.diagnostics import RankMonitor


def erank_np(x):
    x = np.asarray(x, np.float64)
    s = np.linalg.svd(x - x.mean(0), compute_uv=False)
    p = s / s.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def test_rank_monitor_numpy_and_png(tmp_path):
    rng = np.random.default_rng(0)
    model = types.SimpleNamespace(last_outputs=None)
    mon = RankMonitor(lambda: model, str(tmp_path), is_main=True, max_rows=12)
    outs = []
    for _ in range(4):  # 4 steps of 6 rows; only the last 12 rows (2 steps) are kept
        p = rng.standard_normal((6, 5)) @ np.diag([3, 1, 0.3, 0.1, 0.01])
        z = rng.standard_normal((6, 5))
        model.last_outputs = (torch.tensor(p, dtype=torch.float32), torch.tensor(z, dtype=torch.float32))
        outs.append((p, z))
        mon.after_step()
    stats = mon.end_epoch(0)
    p = np.concatenate([o[0] for o in outs[-2:]])
    z = np.concatenate([o[1] for o in outs[-2:]])
    assert stats["erank_online"] == pytest.approx(erank_np(p), rel=1e-5)
    assert stats["erank_target"] == pytest.approx(erank_np(z), rel=1e-5)
    assert stats["rank_differential"] == pytest.approx(erank_np(z) - erank_np(p), rel=1e-4)
    assert stats["rank_differential"] > 0  # the isotropic target has the larger effective rank
    assert os.path.getsize(tmp_path / "spectra.png") > 1000
    assert mon.end_epoch(1) == {}  # nothing collected since


def test_rank_monitor_non_main_rank_is_silent():
    q, _ = np.linalg.qr(np.random.default_rng(1).standard_normal((8, 8)))
    model = types.SimpleNamespace(last_outputs=(torch.tensor(q[:, :4] * 1.0, dtype=torch.float32),) * 2)
    mon = RankMonitor(lambda: model, "/nonexistent-not-written", is_main=False)
    mon.after_step()
    assert mon.end_epoch(0) == {}  # non-main ranks compute nothing
