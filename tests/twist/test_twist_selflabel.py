"""Self-labeling stage (spec 3.4 c): confidences, quantile threshold, masks, pseudo-labels and the CE."""
import math

import numpy as np
import pytest
import torch

from twist_lib import loss as L


def test_quantile_threshold_position_and_strict_mask():
    conf = torch.tensor([0.9, 0.2, 0.5, 0.7, 0.3, 0.8, 0.1, 0.6])
    # descending: .9 .8 .7 .6 .5 .3 .2 .1 ; q=0.5 -> position int(4.0)=4 -> 0.5
    thr = L.quantile_threshold(conf, 0.5)
    assert thr.item() == pytest.approx(0.5)
    assert (conf > thr).tolist() == [True, False, False, True, False, True, False, True]  # 4 of 8 kept
    # q=0.6 -> position int(4.8) = 4 as well; q = 1 -> clamped to the last position B-1 -> 0.1
    assert L.quantile_threshold(conf, 0.6).item() == pytest.approx(0.5)
    assert L.quantile_threshold(conf, 1.0).item() == pytest.approx(0.1)
    # q = 0: the fixed --threshold
    assert L.quantile_threshold(conf, 0.0, fixed=0.65).item() == pytest.approx(0.65)


def test_confidence_is_max_over_the_two_global_views():
    p0 = torch.tensor([[0.7, 0.2, 0.1], [0.4, 0.3, 0.3]])
    p1 = torch.tensor([[0.5, 0.5, 0.0], [0.1, 0.1, 0.8]])
    assert L.confidence(p0, p1).tolist() == pytest.approx([0.7, 0.8])


def test_confidence_ce_hand_computed():
    weak = torch.log(torch.tensor([[0.8, 0.1, 0.1], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8]]))
    strong = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.5, 0.0, 0.0]], requires_grad=True)
    loss = L.confidence_ce(weak, strong, 0.6)  # kept: samples 0 (label 0) and 2 (label 2)
    ce0 = -1.0 + math.log(math.e + 2)
    ce2 = -0.0 + math.log(math.exp(0.5) + 2)
    assert loss.item() == pytest.approx((ce0 + ce2) / 2, rel=1e-6)
    loss.backward()
    assert torch.all(strong.grad[1] == 0)  # the masked-out sample gets no gradient
    # empty mask -> zero loss with a graph
    z = L.confidence_ce(weak, strong, 0.99)
    assert z.item() == 0.0 and z.requires_grad


def np_ce(logits, labels):
    out = []
    for l, y in zip(logits, labels):
        m = l.max()
        out.append(-(l[y] - m - np.log(np.exp(l - m).sum())))
    return float(np.mean(out)) if out else 0.0


def test_self_label_loss_matches_independent_computation():
    rng = np.random.default_rng(0)
    B, C, n = 8, 5, 4
    views = [rng.normal(size=(B, C)) * 2 for _ in range(n)]
    q = 0.5
    out = L.self_label_loss([torch.tensor(v) for v in views], q)
    sm = lambda f: np.exp(f) / np.exp(f).sum(1, keepdims=True)
    m0, m1 = sm(views[0]).max(1), sm(views[1]).max(1)
    conf = np.maximum(m0, m1)
    thr = np.sort(conf)[::-1][min(int(q * B), B - 1)]
    keep = conf > thr
    use0 = m0 > m1
    weak = np.where(use0[:, None], views[0], views[1])
    strong = np.where(use0[:, None], views[1], views[0])
    labels = sm(weak).argmax(1)
    ref = np_ce(strong[keep], labels[keep]) + sum(np_ce(views[v][keep], labels[keep]) for v in range(2, n))
    ref /= n - 1
    assert out["threshold"].item() == pytest.approx(thr)
    assert out["frac"].item() == pytest.approx(keep.mean())
    assert out["final"].item() == pytest.approx(ref, rel=1e-9)


def test_self_label_with_teacher_uses_teacher_confidence_and_labels():
    rng = np.random.default_rng(1)
    B, C = 6, 4
    student = [torch.tensor(rng.normal(size=(B, C))) for _ in range(2)]
    teacher = [torch.tensor(rng.normal(size=(B, C)) * 3) for _ in range(2)]
    out = L.self_label_loss(student, 0.5, teacher=teacher)
    t0, t1 = torch.softmax(teacher[0], 1), torch.softmax(teacher[1], 1)
    conf = torch.maximum(t0.max(1).values, t1.max(1).values)
    thr = conf.sort(descending=True).values[3]
    assert out["threshold"].item() == pytest.approx(thr.item())
    use0 = t0.max(1).values > t1.max(1).values
    labels = torch.where(use0, t0.argmax(1), t1.argmax(1))
    strong = torch.where(use0[:, None], student[1], student[0])
    keep = conf > thr
    ref = torch.nn.functional.cross_entropy(strong[keep], labels[keep])
    assert out["final"].item() == pytest.approx(ref.item(), rel=1e-9)
