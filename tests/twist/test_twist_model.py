"""Model pieces: crops grouped by resolution, head layout and init, EMA update, harder crops, the clustering
evaluation on fixed predictions and the ViT last-blocks features."""
import math
import os

import pytest
import torch
import torch.nn as nn

from core.dist.syncbn import GroupBatchNorm
from twist_lib.head import ProjectionHead
from twist_lib.model import TWIST, ema_update


class CountingBackbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = []
        self.lin = nn.Linear(3, 4)
        self.feat_dim = 4

    def forward(self, x):
        self.calls.append(tuple(x.shape))
        return self.lin(x.mean(dim=(2, 3)))


def test_backbone_called_once_per_resolution_and_head_once():
    bb = CountingBackbone()
    head = ProjectionHead(4, 8, 5)
    net = TWIST(bb, head)
    crops = [torch.randn(3, 3, 16, 16), torch.randn(3, 3, 16, 16)] + [torch.randn(3, 3, 8, 8) for _ in range(4)]
    out = net.logits(crops)
    assert bb.calls == [(6, 3, 16, 16), (12, 3, 8, 8)]
    assert out.shape == (18, 5)
    # the logit BN is non-affine and standardises every column over all 18 rows
    assert isinstance(head.norm, GroupBatchNorm) and head.norm.weight is None
    torch.testing.assert_close(out.mean(0), torch.zeros(5), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.var(0, unbiased=False), torch.ones(5), atol=1e-3, rtol=0)


def test_head_layout_and_options():
    h = ProjectionHead(4, 8, 5, proj_norm="ln", act="gelu", drop=0.3, lbn_type="identity", trunc_init=True)
    kinds = [type(m).__name__ for m in h.projection_head]
    assert kinds == ["Linear", "LayerNorm", "GELU", "Dropout", "Linear", "LayerNorm", "GELU"]
    assert h.projection_head[1].eps == 1e-6 and h.projection_head[3].p == 0.3
    assert isinstance(h.norm, nn.Identity)
    for m in h.modules():
        if isinstance(m, nn.Linear):
            assert torch.all(m.bias == 0)
    torch.manual_seed(0)
    big = ProjectionHead(4, 64, 64, trunc_init=True).last_linear.weight  # trunc-normal(std 0.02) on [-2, 2]
    assert big.std().item() == pytest.approx(0.02, rel=0.05) and big.abs().max() < 0.1
    names = set(dict(ProjectionHead(4, 8, 5).named_parameters()))
    assert {f"projection_head.{i}.{p}" for i in (0, 1, 4, 5) for p in ("weight", "bias")} | {
        "last_linear.weight", "last_linear.bias"} == names


def test_ema_update_hand_values():
    s, t = nn.Linear(1, 1), nn.Linear(1, 1)
    with torch.no_grad():
        s.weight.fill_(1.0), s.bias.fill_(2.0), t.weight.fill_(0.0), t.bias.fill_(4.0)
    ema_update(s, t, 0.9)
    assert t.weight.item() == pytest.approx(0.1) and t.bias.item() == pytest.approx(0.9 * 4 + 0.1 * 2)


def test_harder_crops_after_mme_epochs():
    from types import SimpleNamespace

    from twist_lib.builder import harder_transform

    tf = harder_transform(SimpleNamespace(aug="multicrop", local_crops_number=3, img_size=224))
    assert len(tf) == 5
    scales = [t.transforms[0].scale for t in tf.transforms]
    sizes = [t.transforms[0].size for t in tf.transforms]
    assert scales == [(0.14, 1.0)] * 2 + [(0.05, 0.14)] * 3
    assert sizes[:2] == [[224, 224]] * 2 or sizes[:2] == [(224, 224)] * 2
    assert tuple(sizes[2]) == (96, 96)
    # a barlow run switches to multicrop with L = 0 (the original had forced L = 0)
    assert len(harder_transform(SimpleNamespace(aug="barlow", local_crops_number=12, img_size=32))) == 2


class FixedLogits(nn.Module):
    """Maps an image whose first pixel holds a cluster id to a one-hot logit vector."""

    def __init__(self, k):
        super().__init__()
        self.k = k

    def forward(self, x):
        ids = x[:, 0, 0, 0].round().long()
        return torch.nn.functional.one_hot(ids, self.k).float() * 10


def test_clustering_evaluation_hand_computed(tmp_path):
    from twist_lib.cluster import Indexed, evaluate_clustering

    # 6 samples, 3 classes; clusters are a permutation of the classes except one mistake
    labels = [0, 0, 1, 1, 2, 2]
    clusters = [2, 2, 0, 0, 1, 0]
    ds = [(torch.full((3, 2, 2), float(c)), y) for c, y in zip(clusters, labels)]
    loader = torch.utils.data.DataLoader(Indexed(ds), batch_size=4, shuffle=False)
    st = evaluate_clustering(FixedLogits(3), loader, torch.device("cpu"), 1.0, 3, str(tmp_path))
    # best matching: cluster 2 -> class 0, 0 -> 1, 1 -> 2: 5 of 6 correct
    assert st["adjacc"] == pytest.approx(100 * 5 / 6)
    assert st["match"].tolist() == [[0, 1], [1, 2], [2, 0]]
    assert st["mapped_preds"].tolist() == [0, 0, 1, 1, 2, 1]
    # NMI by hand (arithmetic normalisation): joint p = 2/6 (y0,c2), 2/6 (y1,c0), 1/6 (y2,c1), 1/6 (y2,c0);
    # I = 1/2 ln 3 + 1/3 ln 2, H(y) = ln 3, H(c) from cluster sizes 3, 1, 2
    mi = 0.5 * math.log(3) + math.log(2) / 3
    h_c = -(0.5 * math.log(0.5) + math.log(1 / 6) / 6 + math.log(1 / 3) / 3)
    assert st["nmi"] == pytest.approx(100 * mi / ((math.log(3) + h_c) / 2), rel=1e-9)
    # top-5 with 3 clusters: every label is among the top 3 -> 100 %
    assert st["acc5"] == pytest.approx(100.0)
    for f in ("match.npy", "mapped_preds.npy", "confusion.pdf"):
        assert os.path.isfile(tmp_path / f)
    # dim != number of classes: ACC is not computed (-1), as the original with dim != 1000
    st = evaluate_clustering(FixedLogits(4), loader, torch.device("cpu"), 1.0, 4, str(tmp_path), save=False)
    assert st["adjacc"] == -1.0


def test_vit_last_blocks_features_match_forward_features():
    import importlib.util

    from core.backbones import build_backbone

    here = os.path.dirname(os.path.abspath(__file__))
    spec = importlib.util.spec_from_file_location(
        "twist_vitlinear_script", os.path.join(here, "..", "..", "papers", "twist", "evaluate_vitlinear.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(0)
    vit = build_backbone("vit_t", img_size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        full = vit.forward_features(x)
        f1 = mod.last_blocks_features(1, False)(vit, x)
        f4 = mod.last_blocks_features(4, True)(vit, x)
    torch.testing.assert_close(f1, full[:, 0])
    assert f4.shape == (2, 192 * 5)
    torch.testing.assert_close(f4[:, 3 * 192:4 * 192], full[:, 0])  # the last block's CLS comes 4th
    torch.testing.assert_close(f4[:, 4 * 192:], full[:, 1:].mean(1))


@pytest.mark.parametrize("aug,n", [("barlow", 2), ("moco", 2), ("rand", 2), ("multicrop", 4)])
def test_every_augmentation_set_produces_its_views(aug, n):
    from core.data import SyntheticShapes
    from twist_lib.builder import train_transform

    tf = train_transform(aug, 32, 2, (0.4, 1.0), (0.05, 0.4))
    views = tf(SyntheticShapes(1, 32).image(0))
    assert len(views) == n
    assert [tuple(v.shape) for v in views[:2]] == [(3, 32, 32)] * 2
    if aug == "multicrop":
        assert tuple(views[2].shape) == (3, 14, 14)  # 96/224 of the global size


def test_freeze_embedding_and_vit_head_init():
    from types import SimpleNamespace

    from twist_lib.builder import build_optimizer, build_twist

    a = SimpleNamespace(backbone="vit_t", drop_path=0.1, img_size=32, patch_size=16, freeze_embedding=1, hid_dim=8,
                        dim=6, proj_norm="bn", act="gelu", drop=0.0, lbn_type="bn", proj_trunc_init=0,
                        weight_decay=0.06, exclude_bias_weight_decay=1, lr_wbr=1.0, optim="admw")
    net = build_twist(a)
    frozen = [n for n, p in net.named_parameters() if not p.requires_grad]
    assert frozen == ["backbone.patch_embed.proj.weight", "backbone.patch_embed.proj.bias"]
    opt = build_optimizer(net, a)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert id(net.backbone.patch_embed.proj.weight) not in in_opt
    names_g1 = {n for n, p in net.named_parameters() if id(p) in {id(q) for q in opt.param_groups[1]["params"]}}
    assert {"backbone.cls_token", "backbone.pos_embed"} <= names_g1  # no decay for tokens / position embedding
    assert torch.all(net.projection_heads.last_linear.bias == 0)  # ViT: trunc-normal head init, zero bias
    assert isinstance(net.projection_heads.projection_head[2], nn.GELU)
    # drop path increases linearly over the blocks
    rates = [b.drop_path1.drop_prob if hasattr(b.drop_path1, "drop_prob") else 0.0 for b in net.backbone.blocks]
    assert rates[0] == pytest.approx(0.0) and rates[-1] == pytest.approx(0.1)
