"""Evaluation utilities against hand-derived values."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from core.errors import UserError
from core.eval import (cluster_metrics, effective_rank, knn_accuracy, l2_std, linear_probe_features,
                       load_backbone_weights, sanity_check)
from core.eval.knn import knn_scores


def test_effective_rank_known_spectrum():
    # orthogonal columns with singular values 3, 1 -> p = (0.75, 0.25)
    z = torch.zeros(4, 3, dtype=torch.float64)
    z[0, 0], z[1, 1] = 3.0, 1.0
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert effective_rank(z, center=False) == pytest.approx(math.exp(h), rel=1e-9)
    assert effective_rank(torch.eye(5, dtype=torch.float64), center=False) == pytest.approx(5.0)
    collapsed = torch.ones(8, 4)
    assert l2_std(collapsed) == pytest.approx(0.0, abs=1e-7)


def test_weighted_knn_hand_example():
    train = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    ty = torch.tensor([0, 0, 1])
    q = torch.tensor([[0.6, 0.8]])  # sims: 0.6, 0.96, 0.8
    # k=2: neighbours 1 (class 0, w=e^{9.6}) and 2 (class 1, w=e^{8}) -> class 0
    assert knn_accuracy(train, ty, q, torch.tensor([0]), 2, k=2, t=0.1)["top1"] == 100.0
    # k=1 picks the nearest (class 0); query of class 1 is then wrong
    assert knn_accuracy(train, ty, q, torch.tensor([1]), 2, k=1, t=0.1)["top1"] == 0.0


def test_knn_weight_is_exp_sim_over_t():
    """One close neighbour of class 1 against two farther ones of class 0: exp(s/t) decides, not the votes.
    sims to q = (1, 0): 1.0 (class 1), 0.8 and 0.6 (class 0)."""
    train = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [-1.0, 0.0]])
    ty = torch.tensor([1, 0, 0, 2])
    q = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    for t in (0.1, 0.5, 1.0):
        expected = [math.exp(0.8 / t) + math.exp(0.6 / t), math.exp(1.0 / t), 0.0]  # class 2 is not in the top 3
        for chunk in (1, 1024):
            s = knn_scores(train, ty, q, 3, k=3, t=t, chunk=chunk)
            assert s.shape == (2, 3) and torch.allclose(s, torch.tensor([expected] * 2), rtol=1e-5), (t, chunk)
    # t = 0.1: e^10 > e^8 + e^6 -> class 1 wins with one vote; t = 1: e^1 < e^0.8 + e^0.6 -> class 0 wins
    assert knn_accuracy(train, ty, q[:1], torch.tensor([1]), 3, k=3, t=0.1)["top1"] == 100.0
    assert knn_accuracy(train, ty, q[:1], torch.tensor([0]), 3, k=3, t=1.0)["top1"] == 100.0
    # top-2 at t = 1: class 0 first, class 1 second; class 2 (outside the k neighbours) never ranks above them
    acc = knn_accuracy(train, ty, q[:1], torch.tensor([1]), 3, k=3, t=1.0, topk=(1, 2))
    assert acc == {"top1": 0.0, "top2": 100.0}
    # k larger than the memory: all 4 neighbours, class 2 gets exp(-1 / t)
    s = knn_scores(train, ty, q[:1], 3, k=10, t=0.5)
    assert s[0, 2].item() == pytest.approx(math.exp(-2.0), rel=1e-5)


def test_cluster_metrics_permutation_and_top5():
    labels = np.array([0, 0, 1, 1, 2, 2, 2])
    pred = np.array([2, 2, 0, 0, 1, 1, 0])  # a relabelling with one error
    m = cluster_metrics(pred, labels, topk_pred=np.array([[2, 0], [2, 0], [0, 1], [0, 1], [1, 0], [1, 0], [0, 1]]))
    assert m["acc"] == pytest.approx(100 * 6 / 7)
    assert m["match"].tolist() == [1, 2, 0]
    assert m["acc_top5"] == pytest.approx(100.0)  # the wrong sample has cluster 1 (-> class 2) second
    perfect = cluster_metrics(np.array([1, 1, 0, 0]), np.array([0, 0, 1, 1]))
    assert perfect["nmi"] == pytest.approx(100) and perfect["ari"] == pytest.approx(100)
    assert perfect["fmi"] == pytest.approx(100) and perfect["acc"] == 100


def test_linear_probe_separable_features():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(200) % 4
    f = torch.nn.functional.one_hot(y, 4).float() * 3 + 0.1 * torch.randn(200, 4, generator=g)
    assert linear_probe_features(f[:100], y[:100], f[100:], y[100:], 4, epochs=50) == 100.0
    # it learns from the train labels: test labels shifted by one class give 0 %, 2 of 8 relabelled give 75 %
    assert linear_probe_features(f[:100], y[:100], f[100:108], (y[100:108] + 1) % 4, 4, epochs=50) == 0.0
    wrong = y[100:108].clone()
    wrong[:2] = (wrong[:2] + 2) % 4
    assert linear_probe_features(f[:100], y[:100], f[100:108], wrong, 4, epochs=50) == 75.0


def test_linear_probe_standardises_features():
    """The class sits in a +-1e-3 offset on top of a constant 1000 (and the other feature is noise): only
    standardised features (x - mean) / std make it learnable in 50 Adam steps."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(200) % 2
    f = torch.stack([1000 + 1e-3 * (2 * y - 1).float() + 1e-4 * torch.randn(200, generator=g),
                     torch.randn(200, generator=g)], 1)
    assert linear_probe_features(f[:100], y[:100], f[100:], y[100:], 2, epochs=50) == 100.0


def _tiny():
    return nn.Sequential()


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 2, 1)
        self.fc = nn.Linear(2, 3)


@pytest.mark.parametrize("layout", ["state_dict:module.encoder_q.", "model:backbone.", "backbone:", "raw:module."])
def test_load_backbone_weights_layouts(layout):
    container, prefix = layout.split(":")
    src = _Net()
    sd = {prefix + k: v for k, v in src.state_dict().items() if not k.startswith("fc.")}
    sd[prefix.replace("encoder_q", "encoder_k") + "extra"] = torch.zeros(1) if "encoder_q" in prefix else None
    sd = {k: v for k, v in sd.items() if v is not None}
    obj = sd if container == "raw" else {container: sd, "epoch": 3}
    dst = _Net()
    load_backbone_weights(dst, obj)
    assert torch.equal(dst.conv1.weight, src.conv1.weight)


def test_load_backbone_weights_mismatch_is_readable():
    bad = {"state_dict": {"module.encoder_q.conv9.weight": torch.zeros(1)}}
    with pytest.raises(UserError, match="missing.*conv1.weight"):
        load_backbone_weights(_Net(), bad)
    with pytest.raises(UserError, match="top-level keys"):
        load_backbone_weights(_Net(), {"epoch": 1, "arch": "x"})


def test_sanity_check_detects_change():
    a = _Net().state_dict()
    b = {k: v.clone() for k, v in a.items()}
    b["fc.weight"] += 1  # the head may change
    sanity_check(b, a)
    b["conv1.weight"] += 1
    with pytest.raises(AssertionError, match="conv1.weight"):
        sanity_check(b, a)
