"""lr / weight-decay / quantile / momentum schedules, lr scaling, parameter groups and parameter counts,
pinned to hand-computed values (spec 4.2, 4.3, 5)."""
import math

import numpy as np
import pytest
import torch

from twist_lib.builder import build_optimizer, finalize_args, schedules, set_step
from twist_lib.config import get_args_parser


def parse(*argv):
    return get_args_parser().parse_args(list(argv))


def test_defaults_and_both_spellings():
    a = parse()
    assert (a.lam1, a.lam2, a.tau, a.EPS, a.lbn_type, a.aug, a.optim, a.lr, a.batch_size, a.bunch_size) == \
        (0.0, 1.0, 1.0, 1e-5, "bn", "multicrop", "lars", 0.5, 128, 256)
    assert (a.epochs, a.mme_epochs, a.dim, a.hid_dim, a.local_crops_number, a.lr_sl, a.sl_warmup_epochs) == \
        (850, 800, 4096, 4096, 12, 0.05, 5)
    assert (a.weight_decay, a.weight_decay_end, a.quantile, a.quantile_end) == (1.5e-6, 1.5e-6, 0.5, 0.6)
    assert (a.min1, a.max1, a.min2, a.max2, a.momentum_start, a.momentum_end) == (0.4, 1.0, 0.05, 0.4, 0.996, 1.0)
    assert a.data_path == "synthetic" and a.pin_mem and a.amp == 1
    b = parse("--weight_decay", "0.06", "--weight_decay_end", "0.12")
    c = parse("--weight-decay", "0.06", "--weight-decay-end", "0.12")
    assert (b.weight_decay, b.weight_decay_end) == (c.weight_decay, c.weight_decay_end) == (0.06, 0.12)
    assert parse("--eval-only", "1").eval_only == 1 and parse("--eval_only", "1").eval_only == 1
    assert parse("--no-pin-mem").pin_mem is False


@pytest.mark.parametrize("epochs,warm", [(20, 3), (21, 5), (50, 5), (51, 10), (850, 10)])
def test_forced_warmup(epochs, warm):
    assert finalize_args(parse("--epochs", str(epochs)), 1).warmup_epochs == warm


def test_lr_scaling_and_mme_clamp():
    a = finalize_args(parse("--batch-size", "256", "--epochs", "800"), 8)  # README R50 single node
    assert a.lr == pytest.approx(4.0) and a.lr_sl == pytest.approx(0.4) and a.mme_epochs == 800
    d = finalize_args(parse("--batch-size", "64", "--lr", "0.0003", "--epochs", "300", "--mme_epochs", "300"), 16)
    assert d.lr == pytest.approx(0.0012)
    v = finalize_args(parse("--batch-size", "32", "--lr", "0.00075"), 32)
    assert v.lr == pytest.approx(0.003)


def tiny_model():
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))


def test_lr_piecewise_schedule_hand_values():
    # N = 10 iters/epoch, 100 epochs (10 warm-up), mme 80, sl warm-up 5: w=100, M=800, S=50, T=1000
    a = finalize_args(parse("--epochs", "100", "--mme_epochs", "80", "--batch-size", "256", "--lr", "1.0",
                            "--lr_sl", "0.1", "--lr_wbr", "2"), 4)
    assert a.lr == pytest.approx(4.0) and a.lr_sl == pytest.approx(0.4)
    opt = build_optimizer(tiny_model(), a)
    sched = schedules(a, 10)
    expected = {0: 0.0, 50: 2.0, 100: 4.0, 450: 4.0 * (0.5 + 0.001 * 0.5), 799: None, 800: 0.0, 825: 0.2,
                850: 0.4, 925: 0.4 * (0.5 + 0.001 * 0.5), 999: None}
    for step, lr in expected.items():
        got = set_step(opt, a, sched, step, 10)
        if lr is None:
            continue
        assert got == pytest.approx(lr, rel=1e-12, abs=1e-15), step
        assert opt.param_groups[0]["lr"] == pytest.approx(lr, abs=1e-15)
        assert opt.param_groups[1]["lr"] == pytest.approx(lr / 2, abs=1e-15)  # --lr_wbr 2
    # end of the TWIST stage and of the run approach 0.001 x base
    q = 0.5 * (1 + math.cos(math.pi * 699 / 700))
    assert set_step(opt, a, sched, 799, 10) == pytest.approx(4.0 * (q + 0.001 * (1 - q)))
    q = 0.5 * (1 + math.cos(math.pi * 149 / 150))
    assert set_step(opt, a, sched, 999, 10) == pytest.approx(0.4 * (q + 0.001 * (1 - q)))


def test_weight_decay_cosine_on_group0_only():
    a = finalize_args(parse("--epochs", "2", "--weight_decay", "0.06", "--weight_decay_end", "0.12",
                            "--optim", "admw"), 1)
    opt = build_optimizer(tiny_model(), a)
    assert isinstance(opt, torch.optim.AdamW)
    sched = schedules(a, 2)
    c = math.cos(math.pi / 4)
    hand = [0.06, 0.12 - 0.03 * (1 + c), 0.09, 0.12 - 0.03 * (1 - c)]
    np.testing.assert_allclose(sched["wd"], hand, rtol=1e-12)
    for s in range(4):
        set_step(opt, a, sched, s, 2)
        assert opt.param_groups[0]["weight_decay"] == pytest.approx(hand[s])
        assert opt.param_groups[1]["weight_decay"] == 0.0


def test_quantile_and_momentum_schedules():
    a = finalize_args(parse("--epochs", "3", "--mme_epochs", "1", "--momentum_start", "0.996"), 1)
    s = schedules(a, 2)  # 2 self-labeling epochs x 2 iters; momentum over mme_epochs x 2 iters
    c = math.cos(math.pi / 4)
    np.testing.assert_allclose(s["quantile"], [0.5, 0.6 - 0.05 * (1 + c), 0.55, 0.6 - 0.05 * (1 - c)], rtol=1e-12)
    np.testing.assert_allclose(s["momentum"], [0.996, 0.998], rtol=1e-12)  # 1 - 0.002 (1 + cos(pi i / 2))


def test_parameter_groups_and_optimizers():
    a = finalize_args(parse("--epochs", "2"), 1)
    from twist_lib.head import ProjectionHead

    head = ProjectionHead(5, 6, 7, lbn_type="bn")
    opt = build_optimizer(head, a)
    from core.optim import LARS

    assert isinstance(opt, LARS) and opt.mode == "openself"
    g0, g1 = opt.param_groups
    assert g0["weight_decay"] == 1.5e-6 and not g0.get("lars_exclude", False)
    assert g1["weight_decay"] == 0.0 and g1["lars_exclude"] is True
    assert sum(p.numel() for p in g0["params"]) == 5 * 6 + 6 * 6 + 6 * 7  # the Linear weights
    assert sum(p.numel() for p in g1["params"]) == 6 + 2 * 6 + 6 + 2 * 6 + 7  # biases + BN affine
    a.exclude_bias_weight_decay = 0
    assert build_optimizer(head, a).param_groups[1]["weight_decay"] == 1.5e-6
    a.optim = "sgd"
    sgd = build_optimizer(head, a)
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["momentum"] == 0.9


@pytest.mark.parametrize("name,millions", [("resnet50", 23.5), ("resnet50w2", 93.9), ("vit_s", 21.7),
                                           ("vit_b", 85.8)])
def test_backbone_parameter_counts(name, millions):
    # README table: R50 24M, R50w2 94M, DeiT-S 21M, ViT-B 86M (spec 4.2/4.3 counts)
    from core.backbones import build_backbone

    with torch.device("meta"):
        m = build_backbone(name)
    n = sum(p.numel() for p in m.parameters()) / 1e6
    assert n == pytest.approx(millions, abs=0.06)


def test_head_parameter_counts():
    from twist_lib.head import ProjectionHead

    with torch.device("meta"):
        r50 = ProjectionHead(2048, 4096, 4096)
        r50_big = ProjectionHead(2048, 4096, 32768)
        vits = ProjectionHead(384, 4096, 4096)
    count = lambda m: sum(p.numel() for p in m.parameters()) / 1e6
    assert count(r50) == pytest.approx(42.0, abs=0.05)
    assert count(r50_big) == pytest.approx(159.4, abs=0.05)
    assert count(vits) == pytest.approx(35.2, abs=0.05)


def test_crop_scale_flags_reach_the_crops(tmp_path, monkeypatch):
    """train.py builds its training transform from --min1/--max1 (2 global crops) and --min2/--max2 (the local
    crops, 96/224 of --img_size): the RandomResizedCrop scales and sizes of every view."""
    from torchvision.transforms import v2 as T

    import paper_import

    train = paper_import.load_script("twist", "train.py", "twist_train_script_scales")
    seen = {}

    class Stop(Exception):
        pass

    def fake_build_dataset(path, split, transform, **kw):
        seen["views"] = transform.transforms
        raise Stop

    monkeypatch.setattr(train, "build_dataset", fake_build_dataset)
    with pytest.raises(Stop):
        train.main(["--backbone", "resnet_tiny", "--img_size", "224", "--local_crops_number", "3",
                    "--min1", "0.5", "--max1", "0.9", "--min2", "0.11", "--max2", "0.22", "--epochs", "2",
                    "--batch-size", "4", "--dim", "8", "--hid_dim", "16", "--output_dir", str(tmp_path),
                    "--num_workers", "0", "--device", "cpu"])
    crops = [next(t for t in v.transforms if isinstance(t, T.RandomResizedCrop)) for v in seen["views"]]
    assert [(tuple(c.size), c.scale) for c in crops] == [((224, 224), (0.5, 0.9))] * 2 + [((96, 96), (0.11, 0.22))] * 3
