"""How pretrain.py and lineval.py wire the optimizer and the schedules, checked against the spec's formulas
computed here (spec 5.4-5.6: SGD 0.9 / 1e-4 on the online branch only, lr = base_lr * batch / 256, warm-up
over warmup_epochs * steps_per_epoch, cosine over the *total* steps, EMA 0.996 -> 1; spec 6.3-6.4: linear
eval init_lr = lr * batch / 256, per-epoch cosine, apex-LARC rule with trust 0.001 and clip=False).
The training loops are replaced by a recorder: only the wiring is under test here."""
import math
import os

import torch

import paper_import
from core.optim import LARS

FOLDER = paper_import.paper_dir("unigrad")
TINY = ["train_datadir=synthetic", "test_datadir=synthetic", "arch=resnet_tiny", "projector_input_dim=128",
        "projector_hidden_dim=32", "projector_output_dim=32", "image_size=32", "n_workers=0"]


def load(name):
    return paper_import.load_script("unigrad", f"{name}.py", f"unigrad_wiring_{name}")


def test_pretrain_optimizer_and_schedules(monkeypatch, tmp_path):
    monkeypatch.chdir(FOLDER)
    pretrain = load("pretrain")
    seen = {}

    def record(model, optimizer, loader, ecfg, ctx, before_step=None, **kw):
        seen.update(model=model, optimizer=optimizer, loader=loader, ecfg=ecfg, before_step=before_step)
        return []

    monkeypatch.setattr(pretrain, "train", record)
    # 32 images, global batch 8, 1 process: 4 steps per epoch; 10 epochs -> T = 40, 2 warm-up epochs -> Tw = 8
    pretrain.main(["configs/unigrad.py"] + TINY + ["num_samples=32", "whole_batch_size=8", "epochs=10",
                                                    "warmup_epochs=2", f"work_dir={tmp_path}"])
    opt, model = seen["optimizer"], seen["model"]
    assert type(opt) is torch.optim.SGD and len(opt.param_groups) == 1
    g = opt.param_groups[0]
    assert g["momentum"] == 0.9 and g["weight_decay"] == 1e-4 and not g["nesterov"]
    inner = getattr(model, "module", model)
    online = {id(p) for m in (inner.encoder, inner.projector) for p in m.parameters()}
    assert {id(p) for p in g["params"]} == online  # the momentum branch is not optimised
    assert len(seen["loader"]) == 4 and seen["ecfg"].epochs == 10

    init = 0.05 * 8 / 256
    lo, T, Tw = 1e-3 * init, 40, 8
    for step in (0, 3, 7, 8, 9, 20, 39):
        seen["before_step"](step, T)
        if step < Tw:
            want = (init - lo) * step / Tw + lo
        else:
            want = lo + 0.5 * (init - lo) * (1 + math.cos(math.pi * (step - Tw) / T))
        assert math.isclose(g["lr"], want, rel_tol=1e-12), step
        assert math.isclose(inner.mm, 1 - (1 - 0.996) * (math.cos(math.pi * step / T) + 1) / 2, rel_tol=1e-12)
    # the quirk: the cosine runs over T, not T - Tw, so the last step stays above 1e-3 * init
    seen["before_step"](T - 1, T)
    assert g["lr"] > 2 * lo

    # warm-up longer than the run (the README smoke command: 5 warm-up epochs, 2 epochs): linear all along
    pretrain.main(["configs/unigrad.py"] + TINY + ["num_samples=32", "whole_batch_size=8", "epochs=2",
                                                    f"work_dir={tmp_path}"])
    g = seen["optimizer"].param_groups[0]
    for step in (0, 1, 7):
        seen["before_step"](step, 8)
        assert math.isclose(g["lr"], (init - lo) * step / 20 + lo, rel_tol=1e-12), step


def test_lineval_optimizer_and_schedule(monkeypatch):
    monkeypatch.chdir(FOLDER)
    lineval = load("lineval")
    seen = {}

    def record(model, optimizer, train_loader, val_loader, cfg, ctx, *, lr_at_epoch, reference_state=None, **kw):
        seen.update(optimizer=optimizer, train_loader=train_loader, cfg=cfg, lr_at_epoch=lr_at_epoch,
                    model=model)
        return {"best_acc1": 0.0}

    monkeypatch.setattr(lineval, "run_linear_eval", record)
    base = ["--data", "synthetic", "-a", "resnet_tiny", "--image-size", "32", "--num-samples", "32", "-j", "0"]
    lineval.main(base + ["--lars"])  # defaults: 90 epochs, batch 4096, lr 0.1, momentum 0.9, wd 0
    opt = seen["optimizer"]
    assert isinstance(opt, LARS) and opt.mode == "larc"
    g = opt.param_groups[0]
    assert (g["eta"], g["clip"], g["momentum"], g["weight_decay"]) == (0.001, False, 0.9, 0.0)
    assert seen["train_loader"].batch_size == 4096 and seen["cfg"].epochs == 90
    inner = getattr(seen["model"], "module", seen["model"])
    assert [n for n, p in inner.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]
    init = 0.1 * 4096 / 256  # 1.6
    assert math.isclose(g["lr"], 1.6) and math.isclose(seen["lr_at_epoch"](0), 1.6)
    assert math.isclose(seen["lr_at_epoch"](45), 0.8)
    assert math.isclose(seen["lr_at_epoch"](30), init * 0.5 * (1 + math.cos(math.pi / 3)))
    assert math.isclose(seen["lr_at_epoch"](89), init * 0.5 * (1 + math.cos(math.pi * 89 / 90)))
    # without --lars: plain SGD with the same settings
    lineval.main(base + ["-b", "512", "--lr", "0.2", "--wd", "1e-6"])
    opt = seen["optimizer"]
    assert type(opt) is torch.optim.SGD
    g = opt.param_groups[0]
    assert math.isclose(g["lr"], 0.2 * 512 / 256) and g["weight_decay"] == 1e-6 and g["momentum"] == 0.9
