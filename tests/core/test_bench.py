"""core.bench: the tiny recipe steps run and report finite positive numbers, fvcore counts match hand counts and
the published backbone figures, the GPU peak table, the input-pipeline timers, and the fast hue path is
bit-exact with torchvision's PIL adjust_hue."""
import io
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import functional as TF

from core.augment import hue as H
from core.augment import recipes
from core.augment.ops import ColorJitter
from core.backbones import build_backbone
from core.bench import flops as F
from core.bench import inputs as I
from core.bench.recipes import FlopPart, build
from core.bench.step import time_recipe


# ----------------------------------------------------------------------------------------------- FLOP counts
def test_hand_count_of_a_tiny_conv_and_linear_net():
    """conv 3->4, 3x3, stride 1, pad 1 on 8x8: 8*8*4*3*9 MACs; linear 256->10: 2560 MACs (fvcore: 1 per MAC)."""
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
    assert F.forward_flops(net, torch.randn(1, 3, 8, 8)) == 8 * 8 * 4 * 3 * 9 + 256 * 10
    part = FlopPart("net", net, (3, 8, 8), calls=3, trained=True)
    teacher = FlopPart("teacher", net, (3, 8, 8), calls=1, trained=False)
    res = F.step_flops([part, teacher])
    one = (8 * 8 * 4 * 3 * 9 + 256 * 10) / 1e9
    assert res["gflop_fwd"] == pytest.approx(4 * one) and res["gflop_step"] == pytest.approx(3 * 3 * one + one)


def test_resnet50_forward_is_4_1_gflops():
    """He et al. 2016 / torchvision: ResNet-50 at 224 px = 4.1 GFLOPs (multiply-adds); within 3 %."""
    g = F.forward_flops(build_backbone("resnet50"), torch.randn(1, 3, 224, 224)) / 1e9
    assert abs(g - 4.1) / 4.1 < 0.03


def test_vit_small_forward_is_4_6_gflops():
    """DeiT-S (Touvron et al. 2021, Table 1: ViT-S/16, 22M parameters, 4.6 GFLOPs at 224 px); within 3 %.
    The attention products (scaled_dot_product_attention) are counted by our handle."""
    g = F.forward_flops(build_backbone("vit_s"), torch.randn(1, 3, 224, 224)) / 1e9
    assert abs(g - 4.6) / 4.6 < 0.03


def test_swav_resnet50w2_against_the_width_rule():
    """SwAV's ResNet-50-w2 doubles every width, the stem included: each conv / fc costs 4 x its ResNet-50 count
    except the stem conv (3 input channels: 2 x). No FLOP figure is published with the SwAV / SimCLR tables
    (they list 94 M parameters), so the check is this rule on the ResNet-50 count, within 1 %, and the
    published parameter count."""
    x = torch.randn(1, 3, 64, 64)  # the rule holds at any resolution; 64 px keeps the trace short
    r50 = F.forward_flops(build_backbone("resnet50"), x)
    stem = 32 * 32 * 64 * 3 * 49
    want = 4 * (r50 - stem) + 2 * stem
    w2 = build_backbone("resnet50w2")
    got = F.forward_flops(w2, x)
    assert abs(got - want) / want < 0.01
    assert abs(sum(p.numel() for p in w2.parameters()) / 1e6 - 94) < 1.0


def test_peak_table_lookup():
    assert F.peak_tflops("NVIDIA H100 80GB HBM3", "bfloat16") == pytest.approx(989.4)
    assert F.peak_tflops("NVIDIA H100 PCIe", "float16") == pytest.approx(756.0)
    assert F.peak_tflops("NVIDIA A100-SXM4-80GB", "off") == pytest.approx(19.5)
    assert F.peak_tflops("NVIDIA A10", "bfloat16") == pytest.approx(125.0)  # not A100's row
    assert F.peak_tflops("Tesla V100-SXM2-32GB", "bfloat16") is None      # no native bf16
    assert F.peak_tflops("Tesla T4", "float16") == pytest.approx(65.0)
    assert F.peak_tflops("NVIDIA GeForce RTX 4090", "bfloat16") == pytest.approx(165.2)
    assert F.peak_tflops("Some Future GPU", "bfloat16") is None


# ----------------------------------------------------------------------------------------------- recipe steps
@pytest.mark.parametrize("name", ["unigrad", "rdm_simsiam", "moco_au", "twist_r50", "mask_rcnn"])
def test_tiny_recipe_step_runs(name):
    torch.manual_seed(0)
    r = build(name, tiny=True)
    before = [p.detach().clone() for p in r.model.parameters() if p.requires_grad]
    t = time_recipe(r, 2, torch.device("cpu"), steps=1, warmup=1)
    assert t["pairs_per_s"] > 0 and t["ms_per_step"] > 0 and t["peak_mem_gb"] > 0 and math.isfinite(t["loss"])
    after = [p.detach() for p in r.model.parameters() if p.requires_grad]
    assert any(not torch.equal(a, b) for a, b in zip(before, after))  # a real optimizer step happened
    f = F.step_flops(r.flop_parts)
    assert 0 < f["gflop_fwd"] <= f["gflop_step"] <= 3 * f["gflop_fwd"]


def test_cli_flops_only_tiny(capsys):
    from core.bench import main

    out = main(["--tiny", "--flops-only", "--recipe", "moco_au,rdm_simsiam"])
    assert set(out["recipes"]) == {"moco_au", "rdm_simsiam"}
    assert "| moco_au |" in capsys.readouterr().out


def test_cli_bad_recipe_is_one_line(capsys):
    from core.bench import main

    with pytest.raises(SystemExit) as e:
        main(["--recipe", "nope"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error:") and err.strip().count("\n") == 0


# ----------------------------------------------------------------------------------------------- input side
def test_jpeg_folder_and_timers(tmp_path):
    files = I.make_jpeg_folder(str(tmp_path), n=4, size=(120, 90))
    img = Image.open(files[0])
    assert img.format == "JPEG" and img.size == (120, 90)
    assert np.asarray(img.convert("L"), np.float32).std() > 10  # not a flat colour
    aug = recipes.MultiView([recipes.moco_v2(32), recipes.moco_v2(32)])
    pc = I.per_core(aug, files)
    assert pc["decode_ms"] > 0 and pc["augment_ms"] > 0 and pc["pairs_per_s"] > 0
    assert I.with_workers(aug, files, 0, batch_size=2, repeats=2) > 0


# ----------------------------------------------------------------------------------------------- fast hue
def _all_colours():
    idx = np.arange(1 << 24, dtype=np.uint32)
    return Image.fromarray(np.stack([idx >> 16, (idx >> 8) & 255, idx & 255], -1).astype(np.uint8)
                           .reshape(4096, 4096, 3))


@pytest.mark.slow
def test_fast_hue_equals_torchvision_on_every_colour():
    """All 2^24 RGB colours, shifts of both signs, the range ends and 0: bit-exact (about a minute)."""
    img = _all_colours()
    for f in (0.1, -0.1, 0.0371, -0.5, 0.5, 0.0):
        assert np.array_equal(np.asarray(H.adjust_hue_pil(img, f)), np.asarray(TF.adjust_hue(img, f))), f


@pytest.mark.slow
def test_float32_rounding_of_hsv2rgb_is_exact():
    assert H.check_rounding() == 0


def test_fast_hue_on_structured_colours():
    """Every colour whose channels come from 40 levels (ties, 0, 255, neighbours: 64,000 colours) at shifts of
    both signs: bit-exact (the full 2^24 check is the slow test above)."""
    lv = np.unique(np.r_[0, 1, 2, 3, 127, 128, 129, 252, 253, 254, 255, np.linspace(4, 251, 29).astype(int)])
    r, g, b = np.meshgrid(lv, lv, lv, indexing="ij")
    img = Image.fromarray(np.stack([r, g, b], -1).reshape(len(lv), -1, 3).astype(np.uint8))
    for f in (0.1, -0.1, 0.0371, -0.5, 0.5):
        assert np.array_equal(np.asarray(H.adjust_hue_pil(img, f)), np.asarray(TF.adjust_hue(img, f))), f


def test_fast_hue_on_random_images_and_other_modes():
    g = np.random.default_rng(0)
    for shape in ((17, 23, 3), (224, 224, 3)):
        img = Image.fromarray(g.integers(0, 256, shape, dtype=np.uint8))
        f = float(g.uniform(-0.5, 0.5))
        assert np.array_equal(np.asarray(H.adjust_hue_pil(img, f)), np.asarray(TF.adjust_hue(img, f)))
    gray = Image.fromarray(g.integers(0, 256, (8, 8), dtype=np.uint8))
    assert H.adjust_hue_pil(gray, 0.2) is gray or np.array_equal(np.asarray(H.adjust_hue_pil(gray, 0.2)),
                                                                 np.asarray(gray))
    with pytest.raises(ValueError):
        H.adjust_hue_pil(gray, 0.6)


def test_color_jitter_same_draws_same_output_as_torchvision():
    """Same seed -> same parameters and the same image as torchvision's v2.ColorJitter (all four adjustments)."""
    buf = io.BytesIO()
    I.natural_image(np.random.default_rng(1), (64, 48)).save(buf, "JPEG")
    img = Image.open(buf).convert("RGB")
    fast, slow = ColorJitter(0.4, 0.4, 0.4, 0.1), T.ColorJitter(0.4, 0.4, 0.4, 0.1)
    assert isinstance(fast, T.ColorJitter) and (fast.brightness, fast.hue) == (slow.brightness, slow.hue)
    for seed in range(20):
        torch.manual_seed(seed)
        a = np.asarray(fast(img))
        torch.manual_seed(seed)
        assert np.array_equal(a, np.asarray(slow(img))), seed
    t = torch.rand(3, 8, 8)  # tensors go through torchvision unchanged
    torch.manual_seed(0)
    a = fast(t)
    torch.manual_seed(0)
    assert torch.equal(a, slow(t))


def test_to_normalized_tensor_equals_the_three_torchvision_transforms():
    from torchvision import tv_tensors

    from core.augment.ops import ToNormalizedTensor

    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    fast = ToNormalizedTensor(mean, std)
    slow = T.Compose([T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(list(mean), list(std))])
    g = np.random.default_rng(0)
    for img in (Image.fromarray(g.integers(0, 256, (31, 17, 3), dtype=np.uint8)),
                Image.fromarray(np.arange(256, dtype=np.uint8).repeat(3).reshape(16, 16, 3))):
        a, b = fast(img), slow(img)
        assert isinstance(a, tv_tensors.Image) and a.dtype == torch.float32 and torch.equal(a, b)
    gray = Image.fromarray(g.integers(0, 256, (8, 8), dtype=np.uint8))  # other modes: the slow path
    assert torch.equal(fast(gray), slow(gray)) and fast.mean == list(mean) and fast.std == list(std)
