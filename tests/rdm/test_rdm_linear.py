"""solo-learn ``main_linear.py`` as ``LinearModel`` does it (issue #12): schedulers by hand, the default
``reduce`` stops as in the original, a checkpoint only with ``--save_checkpoint``, resume from it."""
import argparse
import importlib.util
import json
import math
import os

import pytest
import torch

RDM = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "papers", "rdm"))


def load():
    spec = importlib.util.spec_from_file_location("rdm_linear_script", os.path.join(RDM, "main_linear.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def ns(**kw):
    base = dict(scheduler="none", warmup_epochs=10, warmup_start_lr=0.003, min_lr=0.0, lr_decay_steps=None,
                weight_decay=1e-4)
    return argparse.Namespace(**{**base, **kw})


def test_schedules_by_hand():
    lr_at = load().lr_at
    spe, total = 3, 5 * 3
    # pl_bolts LinearWarmupCosineAnnealingLR over steps: 2 warm-up epochs = 6 steps, from 0.003 to 1 at step 5
    a = ns(scheduler="warmup_cosine", warmup_epochs=2)
    assert lr_at(a, 1.0, 0, total, spe) == pytest.approx(0.003)
    assert lr_at(a, 1.0, 5, total, spe) == pytest.approx(1.0)
    assert lr_at(a, 1.0, 2, total, spe) == pytest.approx(0.003 + 2 * (1 - 0.003) / 5)
    assert lr_at(a, 1.0, 9, total, spe) == pytest.approx(0.5 * (1 + math.cos(math.pi * 3 / 9)))
    assert lr_at(ns(scheduler="warmup_cosine", warmup_epochs=0), 1.0, 0, total, spe) == pytest.approx(1.0)
    # MultiStepLR(milestones, gamma=0.1) per epoch; ExponentialLR(gamma=weight_decay) per epoch
    s = ns(scheduler="step", lr_decay_steps=[1, 3])
    assert [lr_at(s, 2.0, k * spe, total, spe) for k in range(4)] == pytest.approx([2.0, 0.2, 0.2, 0.02])
    e = ns(scheduler="exponential", weight_decay=0.5)
    assert [lr_at(e, 2.0, k * spe + 1, total, spe) for k in range(3)] == pytest.approx([2.0, 1.0, 0.5])
    assert lr_at(ns(), 0.7, 11, total, spe) == 0.7


def pretrained(tmp_path):
    from rdm_lib.models import solo_backbone

    torch.manual_seed(0)
    sd = {f"backbone.{k}": v for k, v in solo_backbone("resnet_tiny", True).state_dict().items()}
    path = tmp_path / "pre.ckpt"
    torch.save({"state_dict": sd}, path)
    return str(path)


def argv(tmp_path, *extra, scheduler=("--scheduler", "step", "--lr_decay_steps", "1")):
    return ["--dataset", "cifar10", "--data_dir", "synthetic", "--backbone", "resnet_tiny", "--optimizer", "sgd",
            *scheduler, "--batch_size", "8", "--max_steps_per_epoch", "2",
            "--num_workers", "0", "--crop_size", "32", "--name", "lin", "--max_epochs", "1",
            "--pretrained_feature_extractor", pretrained(tmp_path), "--checkpoint_dir", str(tmp_path), *extra]


def test_default_scheduler_reduce_stops_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        load().main(argv(tmp_path, scheduler=()))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --scheduler reduce")


def test_checkpoint_only_with_save_checkpoint_and_resume(tmp_path):
    run_dir = tmp_path / "linear" / "lin"
    load().main(argv(tmp_path))
    assert not os.path.exists(run_dir / "lin.ckpt") and os.path.isfile(run_dir / "log.txt")
    load().main(argv(tmp_path, "--save_checkpoint"))
    ck = torch.load(run_dir / "lin.ckpt", map_location="cpu", weights_only=False)
    keys = set(ck["state_dict"])
    assert {"classifier.weight", "classifier.bias"} <= keys and all(k.startswith(("backbone.", "classifier."))
                                                                     for k in keys)
    pre = torch.load(tmp_path / "pre.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    assert all(torch.equal(ck["state_dict"][k], v) for k, v in pre.items())  # the backbone is frozen
    # --resume_from_checkpoint continues at epoch 1 of 2 with the decayed lr of MultiStepLR([1])
    load().main(argv(tmp_path, "--save_checkpoint", "--max_epochs", "2", "--resume_from_checkpoint",
                     str(run_dir / "lin.ckpt")))
    with open(run_dir / "log.txt") as f:
        log = [json.loads(line) for line in f]
    assert [h["epoch"] for h in log] == [0, 0, 1]
    assert log[-1]["lr"] == pytest.approx(0.3 * 8 / 256 * 0.1)
    assert {"val_acc1", "val_acc5", "val_loss"} <= set(log[-1])
