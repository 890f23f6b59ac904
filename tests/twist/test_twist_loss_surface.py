"""The rest of the original's loss surface (objective.py): CE, MaskedCrossEntropyLoss with class weights,
ConfidenceBasedCE with class balancing, and the sync-free masked arithmetic of the self-labeling CE, proved
equal to the boolean-indexing formula it replaces (issue 13.5)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from twist_lib import loss as L


# ----------------------------------------------------------------------------- references (old formulas)
def old_confidence_ce(weak, strong, threshold):
    """The previous implementation: boolean indexing and a host read of ``mask.any()``."""
    prob = F.softmax(weak.detach(), dim=1)
    maxp, target = prob.max(dim=1)
    mask = maxp > threshold
    if not bool(mask.any()):
        return 0 * strong.sum()
    return F.cross_entropy(strong[mask], target[mask])


def original_confidence_ce(weak, strong, threshold, balance):
    """objective.ConfidenceBasedCE of bytedance/TWIST (masked_select + weighted F.cross_entropy), restated."""
    prob = F.softmax(weak, dim=1)
    maxp, target = prob.max(dim=1)
    mask = maxp > threshold
    b, c = prob.shape
    kept = torch.masked_select(target, mask)
    n = kept.shape[0]
    weight = None
    if balance:
        idx, counts = torch.unique(kept, return_counts=True)
        weight = torch.ones(c)  # float32 as the original (torch.ones(c).cuda(), counts.float())
        weight[idx] = 1 / (counts.float() / n)
        weight = weight.to(strong.dtype)  # F.cross_entropy needs the input's dtype
    if not mask.any():
        return 0 * strong.sum()
    x = torch.masked_select(strong, mask.view(b, 1)).view(n, c)
    return F.cross_entropy(x, kept, weight=weight)


def logits(seed, b, c, dtype=torch.float64, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, c, generator=g, dtype=dtype) * scale)


# ------------------------------------------------------------------------------------------------- CE
def test_cross_entropy_hand_values():
    p = torch.tensor([[0.5, 0.5], [1.0, 0.0]], dtype=torch.float64)
    q = torch.tensor([[0.25, 0.75], [0.5, 0.5]], dtype=torch.float64)
    eps = 1e-5
    want = -0.5 * ((0.5 * math.log(0.25 + eps) + 0.5 * math.log(0.75 + eps)) + (1.0 * math.log(0.5 + eps)))
    assert L.cross_entropy(p, q, eps).item() == pytest.approx(want, rel=1e-12)
    # CE(p, q) = KL(p||q) + EH(p) with the same eps inside the logs
    a, b = F.softmax(logits(0, 6, 5), 1), F.softmax(logits(1, 6, 5), 1)
    assert L.cross_entropy(a, b).item() == pytest.approx((L.kl_div(a, b) + L.mean_entropy(a)).item(), rel=1e-12)


# ------------------------------------------------------------------------------- masked cross-entropy
def test_masked_cross_entropy_hand_computed_with_weights():
    x = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0], [1.0, 1.0, 1.0]], dtype=torch.float64,
                     requires_grad=True)
    y = torch.tensor([0, 1, 2, 0])
    m = torch.tensor([True, False, True, True])
    w = torch.tensor([2.0, 5.0, 0.5], dtype=torch.float64)
    ce0 = -2.0 + math.log(math.exp(2) + 2)
    ce2 = -3.0 + math.log(math.exp(3) + 2)
    ce3 = math.log(3.0)
    want = (2.0 * ce0 + 0.5 * ce2 + 2.0 * ce3) / (2.0 + 0.5 + 2.0)
    out = L.masked_cross_entropy(x, y, m, w)
    assert out.item() == pytest.approx(want, rel=1e-12)
    assert L.masked_cross_entropy(x, y, m, w, reduction="sum").item() == pytest.approx(
        2.0 * ce0 + 0.5 * ce2 + 2.0 * ce3, rel=1e-12)
    none = L.masked_cross_entropy(x, y, m, w, reduction="none")
    assert none.tolist() == pytest.approx([2.0 * ce0, 0.0, 0.5 * ce2, 2.0 * ce3], rel=1e-12)
    out.backward()
    assert torch.all(x.grad[1] == 0)
    # equals torch's weighted cross-entropy on the kept rows (the original's masked_select path)
    ref = F.cross_entropy(x.detach()[m], y[m], weight=w)
    assert out.item() == pytest.approx(ref.item(), rel=1e-12)
    with pytest.raises(ValueError):
        L.masked_cross_entropy(x, y, m, w, reduction="batchmean")


def test_masked_cross_entropy_empty_mask_is_zero_with_graph_and_finite_gradient():
    x = logits(3, 4, 3).requires_grad_(True)
    out = L.masked_cross_entropy(x, torch.tensor([0, 1, 2, 0]), torch.zeros(4, dtype=torch.bool))
    assert out.item() == 0.0 and out.requires_grad
    out.backward()
    assert torch.all(x.grad == 0)


# ------------------------------------------------------------- the masked formula equals the old one
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-13), (torch.float32, 1e-6)])
@pytest.mark.parametrize("thr", [0.0, 0.3, 0.5, 0.999])
def test_confidence_ce_masked_equals_boolean_indexing(dtype, tol, thr):
    for seed in range(4):
        weak = logits(seed, 16, 6, dtype)
        strong_new = logits(100 + seed, 16, 6, dtype).requires_grad_(True)
        strong_old = strong_new.detach().clone().requires_grad_(True)
        new = L.confidence_ce(weak, strong_new, thr)
        old = old_confidence_ce(weak, strong_old, thr)
        torch.testing.assert_close(new, old, rtol=tol, atol=tol)
        new.backward()
        old.backward()
        torch.testing.assert_close(strong_new.grad, strong_old.grad, rtol=tol, atol=tol)


def test_self_label_loss_masked_equals_boolean_indexing_with_twelve_local_crops():
    views = [logits(10 + v, 12, 8) for v in range(14)]  # 2 global + 12 local crops, as the default recipe
    p0, p1 = F.softmax(views[0], 1), F.softmax(views[1], 1)
    conf = torch.maximum(p0.max(1).values, p1.max(1).values)
    thr = conf.sort(descending=True).values[min(int(0.5 * 12), 11)]
    first = (p0.max(1).values > p1.max(1).values).unsqueeze(1)
    weak = torch.where(first, views[0], views[1])
    strong = torch.where(first, views[1], views[0])
    old = (old_confidence_ce(weak, strong, thr) + sum(old_confidence_ce(weak, v, thr) for v in views[2:])) / 13
    new = L.self_label_loss(views, 0.5)["final"]
    torch.testing.assert_close(new, old, rtol=1e-13, atol=1e-13)


# --------------------------------------------------------------------------------- class balancing
def test_class_balancing_weights_hand_values():
    target = torch.tensor([0, 0, 2, 2, 2, 1])
    mask = torch.tensor([True, True, True, False, False, False])  # kept labels 0, 0, 2: n = 3
    w = L.class_balancing_weights(target, mask, 4)
    assert w.tolist() == pytest.approx([1 / (2 / 3), 1.0, 1 / (1 / 3), 1.0])


@pytest.mark.parametrize("thr", [0.0, 0.35, 0.6])
def test_confidence_ce_class_balanced_equals_the_original(thr):
    for seed in range(3):
        weak, strong = logits(seed, 20, 5), logits(50 + seed, 20, 5)
        new = L.confidence_ce(weak, strong, thr, class_balancing=True)
        ref = original_confidence_ce(weak, strong, thr, balance=True)
        assert new.item() == pytest.approx(ref.item(), rel=1e-12, abs=1e-14)
        # without balancing it is the plain masked mean
        assert L.confidence_ce(weak, strong, thr).item() == pytest.approx(
            original_confidence_ce(weak, strong, thr, balance=False).item(), rel=1e-12, abs=1e-14)


def test_class_balanced_ce_is_the_mean_over_present_classes_of_their_mean_ce():
    # weight_c = n / count_c makes the weighted mean equal the unweighted mean of per-class mean CEs
    weak, strong = logits(7, 30, 4, scale=3.0), logits(8, 30, 4)
    p = F.softmax(weak, 1)
    maxp, y = p.max(1)
    keep = (maxp > 0.5).numpy()
    ce = F.cross_entropy(strong, y, reduction="none").numpy()
    yk = y.numpy()[keep]
    classes = np.unique(yk)
    assert len(classes) >= 2
    want = np.mean([ce[keep][yk == c].mean() for c in classes])
    got = L.confidence_ce(weak, strong, 0.5, class_balancing=True).item()
    assert got == pytest.approx(want, rel=1e-6)  # the weights are float32, as the original's


def test_self_label_loss_passes_class_balancing_on():
    views = [logits(20 + v, 10, 4, scale=3.0) for v in range(4)]
    plain = L.self_label_loss(views, 0.5)["final"]
    bal = L.self_label_loss(views, 0.5, class_balancing=True)["final"]
    p0, p1 = F.softmax(views[0], 1), F.softmax(views[1], 1)
    conf = torch.maximum(p0.max(1).values, p1.max(1).values)
    thr = conf.sort(descending=True).values[5]
    first = (p0.max(1).values > p1.max(1).values).unsqueeze(1)
    weak = torch.where(first, views[0], views[1])
    strong = torch.where(first, views[1], views[0])
    ref = (original_confidence_ce(weak, strong, thr, True)
           + sum(original_confidence_ce(weak, v, thr, True) for v in views[2:])) / 3
    assert bal.item() == pytest.approx(ref.item(), rel=1e-12)
    assert bal.item() != pytest.approx(plain.item(), rel=1e-6)
