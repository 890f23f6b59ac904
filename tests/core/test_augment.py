"""Recipe parameters and order, and the PIL-exact blur / solarize."""
import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps
from torchvision.transforms import v2 as T

from core.augment import (GaussianBlur, MultiView, Solarize, byol_pair, eval_transform, local_size,
                          moco_v1, moco_v2, multicrop, solo_pipeline, twist_views)
from core.augment.recipes import BICUBIC


def _inner(t):
    return t.transforms[0] if isinstance(t, T.RandomApply) else t


def _kinds(compose):
    return [type(_inner(t)).__name__ for t in compose.transforms]


def test_moco_v1_order_and_params():
    t = moco_v1(224)
    assert _kinds(t)[:4] == ["RandomResizedCrop", "RandomGrayscale", "ColorJitter", "RandomHorizontalFlip"]
    crop, gray, cj = t.transforms[:3]
    assert crop.scale == (0.2, 1.0) and crop.size == (224, 224) and gray.p == 0.2
    assert cj.brightness == (0.6, 1.4) and cj.saturation == (0.6, 1.4) and cj.hue == (-0.4, 0.4)


def test_moco_v2_order_and_params():
    t = moco_v2(224)
    assert _kinds(t)[:5] == ["RandomResizedCrop", "ColorJitter", "RandomGrayscale", "GaussianBlur",
                             "RandomHorizontalFlip"]
    assert t.transforms[1].p == 0.8 and _inner(t.transforms[1]).hue == (-0.1, 0.1)
    assert _inner(t.transforms[1]).saturation == (0.6, 1.4)
    assert t.transforms[3].p == 0.5 and _inner(t.transforms[3]).sigma == (0.1, 2.0)
    assert t.transforms[-1].mean == [0.485, 0.456, 0.406] and t.transforms[-1].std == [0.229, 0.224, 0.225]


def test_byol_pair_asymmetric():
    v1, v2 = byol_pair(224).transforms
    blur = [t.p for t in v1.transforms if isinstance(_inner(t), GaussianBlur)] + \
           [t.p for t in v2.transforms if isinstance(_inner(t), GaussianBlur)]
    sol = [t.p for t in v1.transforms if isinstance(_inner(t), Solarize)] + \
          [t.p for t in v2.transforms if isinstance(_inner(t), Solarize)]
    assert blur == [1.0, 0.1] and sol == [0.0, 0.2]
    assert v1.transforms[0].interpolation == BICUBIC and v1.transforms[0].scale == (0.08, 1.0)
    assert _inner(v1.transforms[2]).saturation == (0.8, 1.2)


def test_solo_cifar_pipeline_params():
    t = solo_pipeline(32, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, gaussian_prob=0.0,
                      solarization_prob=0.2, min_scale=0.08)
    assert _kinds(t)[:7] == ["RandomResizedCrop", "ColorJitter", "RandomGrayscale", "GaussianBlur", "Solarize",
                             "Equalize", "RandomHorizontalFlip"]
    assert t.transforms[0].size == (32, 32) and t.transforms[4].p == 0.2
    assert t.transforms[-1].mean == [0.4914, 0.4822, 0.4465]


def test_multicrop_counts_sizes_and_scales():
    mc = multicrop(224, local_crops_number=3)
    assert len(mc) == 5
    g1, g2, l1 = mc.transforms[0], mc.transforms[1], mc.transforms[2]
    assert g1.transforms[0].size == (224, 224) and g1.transforms[0].scale == (0.4, 1.0)
    assert l1.transforms[0].size == (96, 96) and l1.transforms[0].scale == (0.05, 0.4)
    blur_p = [next(t.p for t in v.transforms if isinstance(_inner(t), GaussianBlur)) for v in (g1, g2, l1)]
    assert blur_p == [1.0, 0.1, 0.5]
    assert any(isinstance(_inner(t), Solarize) and t.p == 0.2 for t in g2.transforms)
    assert local_size(224) == 96 and local_size(32) == 14
    out = multicrop(32, local_crops_number=2)(Image.new("RGB", (40, 40)))
    assert [tuple(o.shape) for o in out] == [(3, 32, 32)] * 2 + [(3, 14, 14)] * 2


def test_twist_moco_and_eval():
    m = twist_views("moco", 224)
    assert len(m) == 2 and m.transforms[0].transforms[0].scale == (0.2, 1.0)
    e = eval_transform(224)
    assert e.transforms[0].size == [256] and e.transforms[1].size == (224, 224)


def test_blur_and_solarize_match_pil():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 20, 3), dtype=np.uint8))
    torch.manual_seed(3)
    radius = 0.1 + 1.9 * torch.rand(()).item()
    torch.manual_seed(3)
    out = GaussianBlur((0.1, 2.0))(img)
    assert np.array_equal(np.asarray(out), np.asarray(img.filter(ImageFilter.GaussianBlur(radius))))
    assert np.array_equal(np.asarray(Solarize(128)(img)), np.asarray(ImageOps.solarize(img, 128)))
    x = np.asarray(img)
    assert np.array_equal(np.asarray(Solarize(128)(img)), np.where(x >= 128, 255 - x, x))
    # every transform gets the same input image, views come back in the transforms' order
    seen = []
    views = MultiView([lambda a: (seen.append(a), 1)[1], lambda a: (seen.append(a), 2)[1], lambda a: 3])(img)
    assert views == [1, 2, 3] and len(seen) == 2 and all(s is img for s in seen)
