"""Backbones: dims, parameter counts, stems and init."""
import pytest
import torch

from core.backbones import build_backbone
from core.errors import UserError


def _count(m):
    return sum(p.numel() for p in m.parameters())


def test_resnet_dims_and_cifar_stem():
    r18 = build_backbone("resnet18", cifar_stem=True)
    assert r18.feat_dim == 512 and r18.conv1.kernel_size == (3, 3) and r18.conv1.stride == (1, 1)
    assert r18.conv1.padding == (2, 2)  # solo-learn's CIFAR stem
    assert isinstance(r18.maxpool, torch.nn.Identity)
    assert r18(torch.randn(2, 3, 32, 32)).shape == (2, 512)
    r50 = build_backbone("resnet50", zero_init_residual=True)
    assert r50.feat_dim == 2048 and float(r50.layer1[0].bn3.weight.abs().sum()) == 0.0
    assert _count(r50) == 23_508_032  # torchvision ResNet-50 without fc
    tiny = build_backbone("resnet_tiny", cifar_stem=True)
    assert tiny(torch.randn(2, 3, 32, 32)).shape == (2, tiny.feat_dim)


def test_swav_wide_resnet50w2_parameter_count():
    w2 = build_backbone("resnet50w2")
    assert w2.feat_dim == 4096 and w2.conv1.out_channels == 128
    assert _count(w2) / 1e6 == pytest.approx(93.9, abs=0.05)
    assert set(w2.state_dict()) == set(build_backbone("resnet50").state_dict())  # same key names


def test_vit_sizes_and_small_crops():
    vs = build_backbone("vit_s", drop_path=0.1)
    assert vs.feat_dim == 384 and _count(vs) / 1e6 == pytest.approx(21.7, abs=0.1)
    vt = build_backbone("vit_t")
    assert vt(torch.randn(1, 3, 96, 96)).shape == (1, 192)
    assert vt(torch.randn(1, 3, 224, 224)).shape == (1, 192)


def test_unknown_backbone():
    with pytest.raises(UserError, match="unknown backbone 'resnet51'"):
        build_backbone("resnet51")
