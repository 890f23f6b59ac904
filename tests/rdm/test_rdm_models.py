"""Losses, models, EMA, parameter groups, lr schedule and the LARS step of the RDM folder, each against an
independent NumPy / hand computation."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from rdm_lib.losses import byol_loss, imagenet_simsiam_loss, rdm_solo_loss, simsiam_loss
from rdm_lib.models import ImageNetSimSiam, SimSiam, SoloBYOL, SoloSimSiam, build_solo_method
from rdm_lib.solo_train import build_optimizer, group_lr

torch.set_num_threads(1)


def cos_np(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def svd_filter_np(p, sigma):
    """solo target map; singular values that are zero in exact arithmetic (centred batch) are dropped."""
    u, s, vh = np.linalg.svd(p, full_matrices=False)
    keep = s > 1e-4 * s[0]
    return (u[:, keep] * s[keep] ** (1 + sigma)) @ vh[keep]


def ce_np(logits, y):
    logits = np.asarray(logits, np.float64)
    m = logits.max(1, keepdims=True)
    lse = np.log(np.exp(logits - m).sum(1)) + m[:, 0]
    return float((lse - logits[np.arange(len(y)), y]).mean())


def test_base_losses_by_hand():
    p = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    z = torch.tensor([[0.0, 1.0], [2.0, 2.0]])
    # cosines: 0 and 1 -> mean 0.5
    assert simsiam_loss(p, z).item() == pytest.approx(-0.5)
    assert byol_loss(p, z).item() == pytest.approx(2 - 2 * 0.5)
    # ImageNet face, mlp: -(cos(p1, z2) + cos(p2, z1)) / 2 with cos(p1, z2) = 0, cos(p2, z1) = 1 (per row)
    p1, z2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    p2, z1 = torch.tensor([[1.0, 1.0]]), torch.tensor([[2.0, 2.0]])
    assert imagenet_simsiam_loss(p1, p2, z1, z2).item() == pytest.approx(-0.5)


@pytest.mark.parametrize("location", ["online", "target"])
@pytest.mark.parametrize("base", ["simsiam", "byol"])
def test_rdm_solo_loss_numpy(location, base):
    rng = np.random.default_rng(0)
    p, z = rng.standard_normal((12, 6)), rng.standard_normal((12, 6))
    sigma = 0.5
    got = rdm_solo_loss(torch.tensor(p, dtype=torch.float32), torch.tensor(z, dtype=torch.float32), "poly",
                        location, sigma, base).item()
    if location == "online":
        c = cos_np(svd_filter_np(p, sigma), z).mean()
    else:
        c = cos_np(p, svd_filter_np(z, sigma)).mean()
    assert got == pytest.approx(-c if base == "simsiam" else 2 - 2 * c, abs=1e-5)


def test_simsiam_builder_structure():
    m = SimSiam("resnet_tiny", dim=32, pred_dim=8, pred_type="mlp")
    fc = m.encoder.fc
    assert [type(x).__name__ for x in fc] == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU",
                                              "Linear", "BatchNorm1d"]
    assert fc[0].bias is None and fc[3].bias is None and not fc[6].bias.requires_grad and not fc[7].affine
    assert m.predictor[0].in_features == 32 and m.predictor[0].out_features == 8 and m.predictor[0].bias is None
    assert isinstance(SimSiam("resnet_tiny", 32, 8, "poly").predictor, nn.Identity)
    # zero_init_residual=True as torchvision resnet(num_classes=dim, zero_init_residual=True)
    assert all(float(b.bn2.weight.detach().abs().sum()) == 0 for b in m.encoder.modules() if hasattr(b, "bn2"))


@pytest.mark.parametrize("pred_type,location,sigma", [("mlp", "online", 0.0), ("poly", "target", -0.5),
                                                      ("log_1", "online", 0.0), ("poly", "online", 2.0)])
def test_imagenet_simsiam_loss_numpy(pred_type, location, sigma):
    torch.manual_seed(0)
    model = ImageNetSimSiam("resnet_tiny", dim=32, pred_dim=8, pred_type=pred_type, pred_location=location,
                            sigma=sigma, guard=True)  # opt-in guard: the reference below drops the null direction
    x1, x2 = torch.randn(6, 3, 32, 32), torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        p1, p2, z1, z2 = (t.double().numpy() for t in SimSiam.forward(model, x1, x2))
        loss, _ = model(([x1, x2], torch.zeros(6, dtype=torch.long)))

    def term(p, z):
        if pred_type == "mlp":
            return cos_np(p, z).mean()
        u, s, vh = np.linalg.svd(p, full_matrices=False)  # batch 6 < dim 32: SVD branch
        # the output BN centres the batch, so p has rank 5: its null direction is exactly null (the guard)
        keep = s > 1e-4 * s[0]
        u, s, vh = u[:, keep], s[keep], vh[keep]
        f = {"poly": lambda: s ** sigma, "log_1": lambda: np.log1p(s)}[pred_type]()
        if location == "online":
            return cos_np((u * (s * f)) @ vh, z).mean()
        return cos_np(p, z @ (vh.T * s ** sigma) @ vh).mean()

    want = -(term(p1, z2) + term(p2, z1)) * 0.5
    assert loss.item() == pytest.approx(want, abs=1e-5)


def batch(n=8, size=32):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(n, 3, size, size, generator=g), torch.randn(n, 3, size, size, generator=g)], \
        torch.arange(n) % 4


@pytest.mark.parametrize("rdm", [None, dict(pred_type="poly", pred_location="target", sigma=-1.0, guard=True)])
def test_solo_simsiam_loss_numpy(rdm):
    torch.manual_seed(0)
    m = SoloSimSiam("resnet_tiny", num_classes=4, cifar=True, proj_hidden_dim=16, proj_output_dim=24,
                    pred_hidden_dim=8, rdm=rdm)
    (x1, x2), y = batch()
    with torch.no_grad():
        loss, logs = m(([x1, x2], y))
        f1, f2 = m.backbone(x1), m.backbone(x2)
        z1, z2 = m.projector(f1), m.projector(f2)
        l1, l2 = m.classifier(f1).numpy(), m.classifier(f2).numpy()
        if rdm is None:
            p1, p2 = m.predictor(z1).numpy(), m.predictor(z2).numpy()
        else:
            p1, p2 = z1.numpy(), z2.numpy()
    z1, z2 = z1.double().numpy(), z2.double().numpy()
    if rdm is None:
        neg = -cos_np(p1, z2).mean() / 2 - cos_np(p2, z1).mean() / 2
    else:  # sigma=-1 on the target: z -> U V^T
        neg = -cos_np(p1, svd_filter_np(z2, -1.0)).mean() / 2 - cos_np(p2, svd_filter_np(z1, -1.0)).mean() / 2
    want = neg + (ce_np(l1, y.numpy()) + ce_np(l2, y.numpy())) / 2
    assert loss.item() == pytest.approx(want, abs=1e-4)
    assert logs["neg_cos_sim"].item() == pytest.approx(neg, abs=1e-5)


def test_solo_cifar_stem():
    m = SoloSimSiam("resnet18", num_classes=10, cifar=True, proj_hidden_dim=8, proj_output_dim=8)
    c = m.backbone.conv1
    assert (c.kernel_size, c.stride, c.padding, c.bias) == ((3, 3), (1, 1), (2, 2), None)
    assert isinstance(m.backbone.maxpool, nn.Identity) and m.features_dim == 512


@pytest.mark.parametrize("rdm", [None, dict(pred_type="poly", pred_location="online", sigma=1.0, guard=True)])
def test_solo_byol_loss_numpy(rdm):
    torch.manual_seed(0)
    m = SoloBYOL("resnet_tiny", num_classes=4, cifar=True, proj_hidden_dim=16, proj_output_dim=12,
                 pred_hidden_dim=8, rdm=rdm, momentum_classifier=True)
    with torch.no_grad():  # make the momentum network differ from the online one
        for p in m.momentum_projector.parameters():
            p.add_(0.1 * torch.randn_like(p))
    (x1, x2), y = batch()
    with torch.no_grad():
        loss, logs = m(([x1, x2], y))
        f = [m.backbone(x) for x in (x1, x2)]
        z = [m.projector(t) for t in f]
        p = [m.predictor(t).numpy() for t in z] if rdm is None else [t.numpy() for t in z]
        fm = [m.momentum_backbone(x) for x in (x1, x2)]
        zm = [m.momentum_projector(t).double().numpy() for t in fm]
        lg = [m.classifier(t).numpy() for t in f]
        lgm = [m.momentum_classifier(t).numpy() for t in fm]
    if rdm is not None:
        p = [svd_filter_np(np.asarray(t, np.float64), 1.0) for t in p]
    neg = (2 - 2 * cos_np(p[1], zm[0]).mean()) + (2 - 2 * cos_np(p[0], zm[1]).mean())  # a sum, not a mean
    yy = y.numpy()
    want = neg + (ce_np(lg[0], yy) + ce_np(lg[1], yy)) / 2 + (ce_np(lgm[0], yy) + ce_np(lgm[1], yy)) / 2
    assert loss.item() == pytest.approx(want, abs=1e-4)


def test_byol_ema_update_by_hand():
    m = SoloBYOL("resnet_tiny", num_classes=4, proj_hidden_dim=8, proj_output_dim=8, rdm=None)
    with torch.no_grad():
        for p in m.backbone.parameters():
            p.add_(1.0)
    before = [p.clone() for p in m.momentum_backbone.parameters()]
    online = [p.clone() for p in m.backbone.parameters()]
    bn_before = m.momentum_backbone.bn1.running_mean.clone()
    m.ema_update(0.9)
    for b, o, a in zip(before, online, m.momentum_backbone.parameters()):
        np.testing.assert_allclose(a.detach().numpy(), 0.9 * b.detach().numpy() + 0.1 * o.detach().numpy(), rtol=1e-6, atol=1e-6)
    assert torch.equal(bn_before, m.momentum_backbone.bn1.running_mean)  # buffers are not averaged
    assert not any(p.requires_grad for p in m.momentum_projector.parameters())


def test_param_groups_solo():
    m = build_solo_method("simsiam", backbone="resnet_tiny", num_classes=4, cifar=True, zero_init_residual=False,
                          proj_hidden_dim=8, proj_output_dim=8, pred_hidden_dim=4, pred_type="poly",
                          pred_location="online", sigma=1.0, guard=True, momentum_classifier=False)
    g = {x["name"]: x for x in m.param_groups(0.5, 0.1, 1e-5)}
    assert list(g) == ["backbone", "classifier", "projector", "predictor"]
    assert g["classifier"]["lr"] == 0.1 and g["classifier"]["weight_decay"] == 0.0
    assert g["predictor"].get("static_lr") and g["projector"]["weight_decay"] == 1e-5
    assert all(p is not m.projector[6].bias for p in g["projector"]["params"])  # frozen bias
    rdm = build_solo_method("rdmbyol", backbone="resnet_tiny", num_classes=4, cifar=True,
                            zero_init_residual=False, proj_hidden_dim=8, proj_output_dim=8, pred_hidden_dim=None,
                            pred_type="poly", pred_location="online", sigma=1.0, guard=True,
                            momentum_classifier=True)
    names = [x["name"] for x in rdm.param_groups(0.5, 0.1, 1e-5)]
    assert names == ["backbone", "classifier", "projector", "momentum_classifier"]  # no predictor


def test_warmup_cosine_group_lr_by_hand():
    """pl_bolts LinearWarmupCosineAnnealingLR per step: start 3e-5, base at step W-1, cosine to 0 at T."""
    cfg = dict(scheduler="warmup_cosine", warmup_epochs=2, warmup_start_lr=3e-5, min_lr=0.0, max_epochs=10)
    spe, total, base = 5, 50, 0.5
    assert group_lr(cfg, base, 0, total, spe) == pytest.approx(3e-5)
    assert group_lr(cfg, base, 4, total, spe) == pytest.approx(3e-5 + 4 * (0.5 - 3e-5) / 9)
    assert group_lr(cfg, base, 10, total, spe) == pytest.approx(0.5)
    assert group_lr(cfg, base, 30, total, spe) == pytest.approx(0.25 * (1 + math.cos(math.pi * 20 / 40)))
    assert group_lr(dict(cfg, scheduler="step", lr_decay_steps=[2, 4]), 1.0, 21, total, spe) == pytest.approx(0.01)


def test_solo_lars_step_numpy():
    """solo LARS (eta 0.02, clip, exclude_bias_n_norm), momentum 0.9, one step vs NumPy."""
    torch.manual_seed(0)
    w, b = nn.Parameter(torch.randn(4, 3)), nn.Parameter(torch.randn(4))
    w.grad, b.grad = torch.randn(4, 3), torch.randn(4)
    cfg = dict(optimizer="lars", lr_scaled=1.0, weight_decay=1e-5, eta_lars=0.02, grad_clip_lars=True,
               exclude_bias_n_norm=True)
    opt = build_optimizer(cfg, [dict(params=[w, b], lr=1.0, weight_decay=1e-5)])
    W, G, B, GB = (t.detach().double().numpy().copy() for t in (w, w.grad, b, b.grad))
    opt.step()
    ratio = 0.02 * np.linalg.norm(W) / (np.linalg.norm(G) + 1e-5 * np.linalg.norm(W) + 1e-8)
    ratio = min(ratio / 1.0, 1.0)
    np.testing.assert_allclose(w.detach().numpy(), W - 1.0 * (G + 1e-5 * W) * ratio, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b.detach().numpy(), B - 1.0 * GB, rtol=1e-5, atol=1e-6)  # no wd, no scaling
