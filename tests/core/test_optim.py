"""LARS steps and schedules pinned to hand-computed values (plain Python floats, not the implementation)."""
import math

import pytest
import torch
import torch.nn as nn

from core.optim import (LARS, apply_lr, cosine_epoch_lr, cosine_scheduler, ema_momentum, param_groups,
                        step_lr, twist_lr, unigrad_lr, warmup_cosine)


def _norm(v):
    return math.sqrt(sum(x * x for x in v))


def _one_param(values, grad):
    p = nn.Parameter(torch.tensor(values, dtype=torch.float64))
    p.grad = torch.tensor(grad, dtype=torch.float64)
    return p


def test_lars_larc_scaling_step():
    w, g, lr, wd, eta = [3.0, 4.0], [0.6, 0.8], 0.1, 1e-4, 0.001
    p = _one_param(w, g)
    opt = LARS([p], lr=lr, momentum=0.9, weight_decay=wd, eta=eta, mode="larc")
    opt.step()
    ratio = eta * 5.0 / (1.0 + wd * 5.0 + 1e-8)
    expect = [wi - lr * (gi + wd * wi) * ratio for wi, gi in zip(w, g)]
    assert p.detach().tolist() == pytest.approx(expect, rel=1e-12)
    # second step: buf = 0.9 buf + d
    p.grad = torch.tensor(g, dtype=torch.float64)
    w1 = expect
    ratio2 = eta * _norm(w1) / (1.0 + wd * _norm(w1) + 1e-8)
    d1 = [(gi + wd * wi0) * ratio for wi0, gi in zip(w, g)]
    d2 = [(gi + wd * wi) * ratio2 for wi, gi in zip(w1, g)]
    expect2 = [wi - lr * (0.9 * a + b) for wi, a, b in zip(w1, d1, d2)]
    opt.step()
    assert p.detach().tolist() == pytest.approx(expect2, rel=1e-12)


def test_lars_larc_zero_param_gets_plain_sgd_step():
    # apex LARC: ||p|| = 0 (a zero-initialised bias) -> the gradient is used unscaled, no weight decay
    p = _one_param([0.0, 0.0], [0.5, -1.0])
    LARS([p], lr=0.2, momentum=0.9, weight_decay=0.1, mode="larc").step()
    assert p.detach().tolist() == pytest.approx([-0.1, 0.2], rel=1e-12)


def test_lars_solo_clip_and_exclusion():
    w, g, lr, wd, eta = [3.0, 4.0], [0.06, 0.08], 0.5, 1e-5, 0.02
    W = nn.Parameter(torch.tensor([w], dtype=torch.float64))  # 2-D: adapted
    W.grad = torch.tensor([g], dtype=torch.float64)
    b = _one_param([1.0, 2.0], [0.1, 0.2])  # 1-D: excluded from scaling and weight decay
    LARS([W, b], lr=lr, weight_decay=wd, eta=eta, clip=True, exclude_1d=True, mode="solo").step()
    ratio = eta * 5.0 / (0.1 + wd * 5.0 + 1e-8)
    ratio = min(ratio / lr, 1.0)
    assert W.detach()[0].tolist() == pytest.approx([wi - lr * (gi + wd * wi) * ratio for wi, gi in zip(w, g)],
                                                   rel=1e-12)
    assert b.detach().tolist() == pytest.approx([1.0 - 0.05, 2.0 - 0.1], rel=1e-12)


def test_lars_openself_two_steps_lr_inside_buffer():
    w, g, lr, wd, eta = [3.0, 4.0], [0.6, 0.8], 4.0, 1.5e-6, 0.001
    p = _one_param(w, g)
    opt = LARS([p], lr=lr, momentum=0.9, weight_decay=wd, eta=eta, mode="openself")
    opt.step()
    local = eta * 5.0 / (1.0 + wd * 5.0)
    d1 = [(gi + wd * wi) * local * lr for wi, gi in zip(w, g)]
    w1 = [wi - di for wi, di in zip(w, d1)]
    assert p.detach().tolist() == pytest.approx(w1, rel=1e-12)
    p.grad = torch.tensor(g, dtype=torch.float64)
    opt.param_groups[0]["lr"] = 2.0
    opt.step()
    local2 = eta * _norm(w1) / (1.0 + wd * _norm(w1))
    d2 = [(gi + wd * wi) * local2 * 2.0 for wi, gi in zip(w1, g)]
    w2 = [wi - (0.9 * a + b) for wi, a, b in zip(w1, d1, d2)]
    assert p.detach().tolist() == pytest.approx(w2, rel=1e-12)


def test_lars_openself_excluded_group_unadapted():
    p = _one_param([1.0, -1.0], [0.5, 0.5])
    LARS([{"params": [p], "lars_exclude": True, "weight_decay": 0.0}], lr=0.3, mode="openself").step()
    assert p.detach().tolist() == pytest.approx([1.0 - 0.15, -1.0 - 0.15], rel=1e-12)
    # the group's weight decay still applies (spec 5.2: d = (g + wd p) * 1 * lr for excluded parameters),
    # and the momentum buffer holds lr: step 2 moves by 0.9 d1 + d2
    q = _one_param([1.0, -1.0], [0.5, 0.5])
    opt = LARS([{"params": [q], "lars_exclude": True, "weight_decay": 0.1}], lr=0.3, momentum=0.9, mode="openself")
    opt.step()
    d1 = [(0.5 + 0.1 * 1.0) * 0.3, (0.5 - 0.1 * 1.0) * 0.3]
    q1 = [1.0 - d1[0], -1.0 - d1[1]]
    assert q.detach().tolist() == pytest.approx(q1, rel=1e-12)
    q.grad = torch.tensor([0.5, 0.5], dtype=torch.float64)
    opt.step()
    d2 = [(0.5 + 0.1 * w) * 0.3 for w in q1]
    assert q.detach().tolist() == pytest.approx([w - (0.9 * a + b) for w, a, b in zip(q1, d1, d2)], rel=1e-12)


def test_param_groups_exclusions_and_fixed_lr():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn = nn.BatchNorm2d(4)
            self.pos_embed = nn.Parameter(torch.zeros(1, 4, 8))
            self.predictor = nn.Linear(4, 4)

    groups = {g["name"]: g for g in param_groups(M(), 1e-4, fixed_lr=("predictor",))}
    assert len(groups["decay"]["params"]) == 1  # conv.weight only
    assert groups["no_decay"]["weight_decay"] == 0.0 and groups["no_decay"]["lars_exclude"]
    assert len(groups["no_decay"]["params"]) == 4  # conv.bias, bn.weight, bn.bias, pos_embed
    assert groups["fixed_lr"]["fix_lr"] and len(groups["fixed_lr"]["params"]) == 2
    opt = torch.optim.SGD(param_groups(M(), 1e-4, fixed_lr=("predictor",)), lr=0.1)
    apply_lr(opt, 0.01, init_lr=0.1)
    assert [g["lr"] for g in opt.param_groups] == [0.01, 0.01, 0.1]


def test_epoch_schedules():
    assert cosine_epoch_lr(0.1, 0, 90) == 0.1
    assert cosine_epoch_lr(0.1, 45, 90) == pytest.approx(0.05)
    assert cosine_epoch_lr(0.1, 90, 90) == pytest.approx(0.0, abs=1e-15)
    # MoCo: lr 0.03, schedule 120 160
    assert step_lr(0.03, 119, [120, 160]) == 0.03
    assert step_lr(0.03, 120, [120, 160]) == pytest.approx(0.003)
    assert step_lr(0.03, 199, [120, 160]) == pytest.approx(0.0003)


def test_warmup_cosine_pl_bolts_closed_form():
    # warmup 10 steps from 3e-5 to 1.0, cosine over 90 more steps to 0
    assert warmup_cosine(0, 100, 10, 1.0, 3e-5) == pytest.approx(3e-5)
    assert warmup_cosine(9, 100, 10, 1.0, 3e-5) == pytest.approx(1.0)
    assert warmup_cosine(4, 100, 10, 1.0, 3e-5) == pytest.approx(3e-5 + 4 * (1 - 3e-5) / 9)
    assert warmup_cosine(10, 100, 10, 1.0, 3e-5) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 10, 1.0, 3e-5) == pytest.approx(0.5)


def test_unigrad_lr_matches_spec_derived_values():
    # spec 5.5: init_lr 0.2, 1251 it/epoch, 100 epochs, 5 warm-up epochs
    T, Tw = 100 * 1251, 5 * 1251
    assert unigrad_lr(0, T, Tw, 0.2) == pytest.approx(2e-4)
    assert unigrad_lr(Tw, T, Tw, 0.2) == pytest.approx(0.2)
    assert unigrad_lr(T - 1, T, Tw, 0.2) == pytest.approx(1.43e-3, abs=5e-6)
    assert unigrad_lr(T // 2, T, Tw, 0.2) == pytest.approx(0.116, abs=1e-3)


def test_ema_momentum_cosine():
    assert ema_momentum(0.996, 0, 1000) == pytest.approx(0.996)
    assert ema_momentum(0.996, 500, 1000) == pytest.approx(0.998)
    assert ema_momentum(0.996, 1000, 1000) == pytest.approx(1.0)
    assert ema_momentum(0.99, 250, 1000) == pytest.approx(1 - 0.01 * (math.cos(math.pi / 4) + 1) / 2)


def test_cosine_scheduler_array():
    s = cosine_scheduler(0.04, 0.4, epochs=2, niter_per_ep=5)
    assert len(s) == 10 and s[0] == pytest.approx(0.04)
    assert s[5] == pytest.approx(0.4 + 0.5 * (0.04 - 0.4) * (1 + math.cos(math.pi * 5 / 10)))
    w = cosine_scheduler(1.0, 0.0, epochs=3, niter_per_ep=2, warmup_epochs=1, start_warmup_value=0.0)
    assert w[:2].tolist() == pytest.approx([0.0, 1.0]) and w[2] == pytest.approx(1.0)


def test_twist_lr_phases():
    # 100 epochs (10 warm-up), mme 80, N = 10 iterations/epoch, lr 4.0, lr_sl 0.4
    args = dict(niter_per_ep=10, epochs=100, mme_epochs=80, lr=4.0, lr_sl=0.4)
    assert twist_lr(0, **args) == 0.0
    assert twist_lr(50, **args) == pytest.approx(2.0)               # 50/100 of warm-up
    assert twist_lr(100, **args) == pytest.approx(4.0)              # cosine start
    assert twist_lr(450, **args) == pytest.approx(4.0 * (0.5 + 0.001 * 0.5))  # cosine midpoint
    assert twist_lr(800, **args) == pytest.approx(0.0)              # second warm-up starts at 0
    assert twist_lr(825, **args) == pytest.approx(0.2)              # half of the 5-epoch warm-up
    assert twist_lr(850, **args) == pytest.approx(0.4)
    assert twist_lr(999, **args) == pytest.approx(0.4 * (0.5 * (1 + math.cos(math.pi * 149 / 150)) * 0.999 + 0.001))
    # short runs force 5 / 3 warm-up epochs
    assert twist_lr(15, niter_per_ep=10, epochs=20, mme_epochs=20, lr=1.0, lr_sl=1.0) == pytest.approx(0.5)
    assert twist_lr(25, niter_per_ep=10, epochs=50, mme_epochs=50, lr=1.0, lr_sl=1.0) == pytest.approx(0.5)


def test_lars_group_without_our_keys_uses_defaults():
    # a param group restored from another LARS implementation (no eps / clip / exclude keys)
    w, g = [3.0, 4.0], [0.6, 0.8]
    p = _one_param(w, g)
    opt = LARS([p], lr=0.1, momentum=0.9, weight_decay=0.0, eta=0.001, mode="larc")
    for k in ("eps", "clip", "exclude_1d", "lars_exclude"):
        del opt.param_groups[0][k]
    opt.step()
    ratio = 0.001 * 5.0 / (1.0 + 1e-8)
    assert p.detach().tolist() == pytest.approx([wi - 0.1 * gi * ratio for wi, gi in zip(w, g)], rel=1e-12)


def test_param_groups_weight_decay_and_2d_weights():
    """2-D weights (Linear) are decayed at the given weight decay; only 1-D / .bias go to no_decay."""
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    groups = {g["name"]: g for g in param_groups(model, 0.05)}
    assert groups["decay"]["weight_decay"] == 0.05 and groups["decay"]["params"] == [model[0].weight]
    assert [id(p) for p in groups["no_decay"]["params"]] == [id(model[0].bias), id(model[1].weight), id(model[1].bias)]


def test_schedule_edges_by_hand():
    from core.optim.schedules import twist_warmup_epochs

    # pl_bolts: 2 warm-up steps from the default start 0 reach base at step 1; cosine over span 1 ends at min
    assert warmup_cosine(0, 3, 2, 1.0) == 0.0 and warmup_cosine(1, 3, 2, 1.0) == 1.0
    assert warmup_cosine(3, 3, 2, 1.0, min_lr=0.1) == pytest.approx(0.1)
    assert warmup_cosine(5, 10, 0, 1.0, min_lr=0.2) == pytest.approx(0.2 + 0.5 * 0.8 * (1 + math.cos(math.pi / 2)))
    # UniGrad warm-up: (max - min) * step / Tw + min with min = 1e-3 max
    assert unigrad_lr(1, 100, 4, 2.0) == pytest.approx((2.0 - 2e-3) * 1 / 4 + 2e-3)
    # DINO cosine_scheduler: warm-up from the default 0; one warm-up iteration is linspace(0, base, 1) = [0]
    assert cosine_scheduler(1.0, 0.0, 2, 2, warmup_epochs=1).tolist() == pytest.approx([0.0, 1.0, 1.0, 0.5])
    assert cosine_scheduler(1.0, 0.0, 2, 1, warmup_epochs=1).tolist() == pytest.approx([0.0, 1.0])
    # TWIST forced warm-up: 3 epochs up to 20, 5 up to 50, else 10
    assert [twist_warmup_epochs(e) for e in (20, 21, 50, 51)] == [3, 5, 5, 10]


def test_lars_defaults_are_apex_larc():
    """LARS(params, lr) alone is apex LARC: momentum 0.9, no weight decay, eta 0.001, no clipping, every
    parameter adapted; two steps by hand. An unknown mode is a ValueError naming the modes."""
    w, g, lr = [3.0, 4.0], [0.6, 0.8], 0.5
    p = _one_param(w, g)
    opt = LARS([p], lr=lr)
    assert opt.mode == "larc" and opt.param_groups[0]["lars_exclude"] is False
    opt.step()
    r1 = 0.001 * 5.0 / (1.0 + 1e-8)
    d1 = [gi * r1 for gi in g]
    w1 = [wi - lr * di for wi, di in zip(w, d1)]
    assert p.detach().tolist() == pytest.approx(w1, rel=1e-12)
    p.grad = torch.tensor(g, dtype=torch.float64)
    opt.step()
    r2 = 0.001 * _norm(w1) / (1.0 + 1e-8)
    assert p.detach().tolist() == pytest.approx([wi - lr * (0.9 * a + gi * r2) for wi, a, gi in zip(w1, d1, g)],
                                                rel=1e-12)
    with pytest.raises(ValueError, match=r"^LARS mode must be one of \('larc', 'solo', 'openself'\), got 'sgd'$"):
        LARS([p], lr=lr, mode="sgd")


def test_apply_weight_decay_and_lr_scale():
    """apply_weight_decay sets the named groups only ('decay' by default; an unnamed group 0 counts as
    'decay'); apply_lr multiplies by lr_scale and gives fix_lr groups init_lr or their initial_lr."""
    from core.optim import apply_weight_decay

    a, b, c = (nn.Parameter(torch.zeros(1)) for _ in range(3))
    opt = torch.optim.SGD([{"params": [a]}, {"params": [b], "name": "no_decay", "weight_decay": 0.0},
                           {"params": [c], "name": "head", "weight_decay": 0.3}], lr=0.1, weight_decay=0.5)
    apply_weight_decay(opt, 0.04)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.04, 0.0, 0.3]
    apply_weight_decay(opt, 0.07, group_names=("head", "no_decay"))
    assert [g["weight_decay"] for g in opt.param_groups] == [0.04, 0.07, 0.07]
    opt.param_groups[1]["lr_scale"] = 0.5
    opt.param_groups[2].update(fix_lr=True, initial_lr=0.3)
    apply_lr(opt, 0.2)
    assert [g["lr"] for g in opt.param_groups] == [0.2, 0.1, 0.3]
    apply_lr(opt, 0.2, init_lr=0.9)
    assert opt.param_groups[2]["lr"] == 0.9
