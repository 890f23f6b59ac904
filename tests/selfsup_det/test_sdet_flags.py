"""tools/train_det.py flag and config-key surface (issue #12): every flag and config key is read, listed as
no-effect, or stops with a one-line error; the mmdet meanings of optimizer.type, lr_config.policy/warmup,
runner.type, evaluation.metric and model.norm."""
import glob
import math
import os
import re

import pytest
import torch
import torch.nn as nn

from core.errors import UserError
from tests.flag_surface import assert_flag_surface
from tools.det import config as C
from tools.det.model import build_mask_rcnn, load_pretrained

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CFG = os.path.join(REPO, "papers", "selfsup_det", "configs")
TINY = os.path.join(CFG, "synthetic_tiny.py")
SOURCES = [os.path.join(REPO, "tools", "train_det.py")] + sorted(glob.glob(os.path.join(REPO, "tools", "det", "*.py")))


def test_flag_surface():
    from tools import train_det

    assert_flag_surface(train_det.build_parser(), SOURCES, train_det.NO_EFFECT, train_det.UNSUPPORTED)


def test_converter_flag_surface():
    from tools import checkpoint_convert as cc

    assert_flag_surface(cc.build_parser(), [cc.__file__], cc.NO_EFFECT, cc.UNSUPPORTED)


def test_no_effect_flag_warns_once(capsys):
    from tools.train_det import parse_args

    parse_args([TINY, "--local_rank", "3"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning:")]
    assert len(err) == 1 and "--local_rank=3 has no effect" in err[0]


def test_config_key_surface():
    """Each listed key is read by the code (``["leaf"]`` / ``.get("leaf"``), every shipped config passes, and
    a key nobody reads is a one-line error."""
    text = "\n".join(open(p).read() for p in SOURCES if not p.endswith("config.py")) + open(C.__file__).read().split(
        "CONFIG_KEYS = {")[0] + open(C.__file__).read().split("def _leaves")[1]
    for key in C.CONFIG_KEYS:
        if key.endswith(".*") or key in C.CONFIG_NO_EFFECT:
            continue
        leaf = re.escape(key.split(".")[-1])
        assert re.search(rf"\[\s*['\"]{leaf}['\"]\s*\]|\.(get|pop)\(\s*['\"]{leaf}['\"]", text), f"config key {key} is never read"
    assert set(C.CONFIG_CHOICES) <= set(C.CONFIG_KEYS) and set(C.CONFIG_UNSUPPORTED) <= set(C.CONFIG_KEYS)
    for path in sorted(glob.glob(os.path.join(CFG, "*.py"))):
        C.check_config(C.load_config(path))
    cfg = C.load_config(TINY)
    cfg["model"]["norm_cfg"] = {"type": "GN"}
    with pytest.raises(UserError, match=r"unknown config key 'model.norm_cfg.type'"):
        C.check_config(cfg)


def test_readme_table_is_generated_from_the_dicts():
    with open(os.path.join(REPO, "papers", "selfsup_det", "README.md")) as f:
        readme = f.read()
    assert C.config_table_markdown() in readme
    from tools import train_det

    for dest, why in {**train_det.NO_EFFECT, **train_det.UNSUPPORTED}.items():
        assert f"`--{dest}`" in readme and why in readme


@pytest.mark.parametrize("opt,match", [
    ("optimizer.type=Foo", r"optimizer.type='Foo' is not a torch.optim optimizer"),
    ("optimizer.type=Adam", r"optimizer.momentum is not an argument of torch.optim.Adam"),
    ("lr_config.policy=cosine", r"lr_config.policy='cosine' is not supported \(choose step, CosineAnnealing, fixed\)"),
    ("lr_config.policy=Poly", r"lr_config.policy='Poly' is not supported"),
    ("lr_config.warmup=quadratic", r"lr_config.warmup='quadratic' is not supported \(choose None, constant, linear, exp\)"),
    ("runner.type=IterBasedRunner", r"runner.type='IterBasedRunner' is not supported \(choose EpochBasedRunner\)"),
    ("evaluation.metric=proposal", r"evaluation.metric='proposal' is not supported \(choose bbox, segm\)"),
    ("model.norm=IN", r"model.norm='IN' is not supported \(choose BN, SyncBN, GN\)"),
    ("amp=fp8", r"amp='fp8' is not supported"),
    ("optimizer_config.grad_clip={'max_norm': 1, 'norm_type': 1}", r"norm_type=1 is not supported"),
    ("lr_config.policy=CosineAnnealing", r"exactly one of min_lr and min_lr_ratio"),
    ("lr_config.warmup_ratio=0", r"warmup_ratio must be in \(0, 1\]"),
    ("lr_config.step=0", r"lr_config.step must be a positive int"),
])
def test_unsupported_config_values_are_one_line_errors(opt, match):
    from tools.train_det import parse_args

    with pytest.raises(UserError, match=match) as e:
        parse_args([TINY, "--cfg-options", opt])
    assert "\n" not in str(e.value)


def test_mmcv_lr_policies_hand_values():
    base = 0.02
    # step (list, by epoch) with linear warm-up = the seed's schedule
    s = C.MmcvLr(dict(policy="step", warmup="linear", warmup_iters=500, warmup_ratio=0.001, step=[8, 11]), base, 100, 12)
    assert s(0) == pytest.approx(0.02 * 0.001) and s(250) == pytest.approx(0.02 * (0.001 + 0.999 * 0.5))
    assert s(799) == pytest.approx(0.02) and s(800) == pytest.approx(0.002) and s(1100) == pytest.approx(0.0002)
    # step as a period, floored at min_lr; by iteration
    s = C.MmcvLr(dict(policy="step", step=3, gamma=0.5, min_lr=0.004), base, 10, 12)
    assert s(29) == pytest.approx(0.02) and s(30) == pytest.approx(0.01) and s(60) == pytest.approx(0.005)
    assert s(90) == pytest.approx(0.004)  # 0.0025 floored
    s = C.MmcvLr(dict(policy="step", step=[100, 200], by_epoch=False), base, 10, 30)
    assert s(99) == pytest.approx(0.02) and s(100) == pytest.approx(0.002) and s(250) == pytest.approx(0.0002)
    # CosineAnnealing by epoch: end = 0.02 * 0.01; epoch 6 of 12 -> end + (0.02 - end) / 2
    s = C.MmcvLr(dict(policy="CosineAnnealing", min_lr_ratio=0.01), base, 10, 12)
    assert s(0) == pytest.approx(0.02) and s(65) == pytest.approx(0.0002 + 0.5 * 0.0198)
    assert s(30) == pytest.approx(0.0002 + 0.5 * 0.0198 * (math.cos(math.pi / 4) + 1))
    s = C.MmcvLr(dict(policy="CosineAnnealing", min_lr=0.001, by_epoch=False), base, 10, 2)  # 20 iterations
    assert s(10) == pytest.approx(0.001 + 0.5 * 0.019) and s(20) == pytest.approx(0.001)
    # warm-ups: constant, exp, and counted in epochs
    s = C.MmcvLr(dict(policy="fixed", warmup="constant", warmup_iters=10, warmup_ratio=0.25), base, 5, 3)
    assert s(9) == pytest.approx(0.005) and s(10) == pytest.approx(0.02)
    s = C.MmcvLr(dict(policy="fixed", warmup="exp", warmup_iters=500, warmup_ratio=0.001), base, 100, 3)
    assert s(250) == pytest.approx(0.02 * 0.001 ** 0.5) and s(0) == pytest.approx(0.02 * 0.001)
    s = C.MmcvLr(dict(policy="fixed", warmup="linear", warmup_iters=2, warmup_ratio=0.5, warmup_by_epoch=True),
                 base, 10, 5)
    assert s(10) == pytest.approx(0.02 * (1 - 0.5 * 0.5)) and s(20) == pytest.approx(0.02)
    assert C.MmcvLr(dict(policy="step", step=[1], warmup=None), base, 1, 2)(0) == pytest.approx(0.02)


def test_optimizer_types_as_mmcv_builds_them():
    from tools.train_det import build_optimizer

    m = nn.Linear(3, 2)
    cfg = C.load_config(TINY)
    sgd = build_optimizer(m, cfg, 0.1)
    assert type(sgd) is torch.optim.SGD and sgd.defaults["momentum"] == 0.9 and sgd.defaults["weight_decay"] == 1e-4
    cfg["optimizer"].update(type="AdamW", momentum=None, betas=[0.8, 0.9], weight_decay=0.05)
    adamw = build_optimizer(m, cfg, 0.001)
    assert type(adamw) is torch.optim.AdamW and adamw.defaults["betas"] == (0.8, 0.9)
    assert adamw.defaults["weight_decay"] == 0.05 and adamw.defaults["lr"] == 0.001
    cfg["optimizer"].update(type="Adam", betas=None, weight_decay=None)
    adam = build_optimizer(m, cfg, 0.001)
    assert type(adam) is torch.optim.Adam and adam.defaults["weight_decay"] == 0 and adam.defaults["betas"] == (0.9, 0.999)


def test_group_norm_backbone_loads_a_bn_checkpoint():
    kw = dict(backbone="resnet_tiny", fpn_channels=16, box_fc_dim=32, mask_conv_dim=8, min_size=64, max_size=96,
              anchor_sizes=(16, 32, 64, 128, 256))
    bn = build_mask_rcnn(kw, 3)
    gn = build_mask_rcnn(dict(kw, norm="GN", norm_groups=8), 3)
    body = gn.backbone.body
    assert not any(isinstance(x, nn.modules.batchnorm._BatchNorm) for x in body.modules())
    gns = [x for x in body.modules() if isinstance(x, nn.GroupNorm)]
    assert len(gns) == sum(isinstance(x, nn.BatchNorm2d) for x in bn.backbone.body.modules())
    assert all(g.num_groups == 8 and torch.all(g.weight == 1) and torch.all(g.bias == 0) for g in gns)
    sd = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in bn.backbone.body.state_dict().items()}
    layout, n = load_pretrained(gn, {"state_dict": {"module.encoder_q." + k: v for k, v in sd.items()}}, method="moco")
    own = body.state_dict()
    assert n == len(own) and all(torch.equal(own[k], sd[k]) for k in own)  # weights/biases; BN stats skipped
    with pytest.raises(UserError, match="norm_groups=32 does not divide the 16 channels"):
        build_mask_rcnn(dict(kw, norm="GN"), 3)
