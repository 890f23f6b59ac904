"""Flag surface (issue #12): every option and config key of pretrain.py / lineval.py is read by the code or listed
in the script's NO_EFFECT / UNSUPPORTED; a listed option set to another value prints one warning line; the
README table lists the same entries; --start-epoch with --pretrained is reset to 0 as the original;
validation counts every image once over the ranks."""
import os
import re

import pytest
import torch

import paper_import
from flag_surface import assert_flag_surface

FOLDER = paper_import.paper_dir("unigrad")
TINY = ["train_datadir=synthetic", "test_datadir=synthetic", "arch=resnet_tiny", "projector_input_dim=128",
        "projector_hidden_dim=32", "projector_output_dim=32", "image_size=16", "num_samples=16", "n_workers=0",
        "whole_batch_size=4", "epochs=1"]
LIN = ["--data", "synthetic", "-a", "resnet_tiny", "--image-size", "16", "--num-samples", "16", "-j", "0"]


def load(name):
    return paper_import.load_script("unigrad", f"{name}.py", f"unigrad_flags_{name}")


def src(*names):
    return [os.path.join(FOLDER, n) for n in names]


def test_pretrain_surface_options_and_config_keys():
    pretrain = load("pretrain")
    # config.py only validates and resolves keys; reading a key there is not a use
    assert_flag_surface(pretrain.flag_surface(), src("pretrain.py", "unigrad_lib/model.py", "unigrad_lib/launch.py",
                                                     "unigrad_lib/grads.py"), pretrain.NO_EFFECT, pretrain.UNSUPPORTED)
    dests = {a.dest for a in pretrain.flag_surface()._actions}
    from unigrad_lib.config import DEFAULTS, ORIGINAL_KEYS
    assert set(ORIGINAL_KEYS) | set(DEFAULTS) <= dests  # every config key is on the surface


def test_lineval_surface():
    lineval = load("lineval")
    assert_flag_surface(lineval.get_parser(), src("lineval.py", "unigrad_lib/launch.py"), lineval.NO_EFFECT,
                        lineval.UNSUPPORTED)


def _record_train(monkeypatch, module):
    seen = {}
    monkeypatch.setattr(module, "train", lambda *a, **k: seen.update(args=a, kw=k) or [])
    return seen


def test_no_effect_config_key_warns_once(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(FOLDER)
    pretrain = load("pretrain")
    _record_train(monkeypatch, pretrain)
    pretrain.main(["configs/unigrad.py"] + TINY + [f"work_dir={tmp_path}"])  # released values: no warning
    assert "warning" not in capsys.readouterr().err
    pretrain.main(["configs/unigrad.py"] + TINY + ["num_layers=2", "test_freq=5", f"work_dir={tmp_path}"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning")]
    assert len(err) == 2 and "num_layers=2 has no effect" in err[0] and "test_freq=5 has no effect" in err[1]
    pretrain.main(["--local_rank", "1", "configs/unigrad.py"] + TINY + [f"work_dir={tmp_path}"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning")]
    assert len(err) == 1 and "--local_rank=1 has no effect" in err[0]


def _record_lineval(monkeypatch, lineval):
    seen = {}

    def record(model, optimizer, train_loader, val_loader, cfg, ctx, **kw):
        seen.update(cfg=cfg, val_loader=val_loader)
        return {"best_acc1": 0.0}

    monkeypatch.setattr(lineval, "run_linear_eval", record)
    return seen


def test_lineval_gpu_flag_warns(monkeypatch, capsys):
    lineval = load("lineval")
    _record_lineval(monkeypatch, lineval)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    lineval.main(LIN + ["--gpu", "0"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning")]
    assert len(err) == 1 and "--gpu=0 has no effect" in err[0]
    assert torch.backends.cudnn.benchmark  # the original sets it unconditionally


def test_start_epoch_is_reset_by_pretrained(monkeypatch, capsys, tmp_path):
    """Original lineval.py (and MoCo's main_lincls): loading --pretrained sets args.start_epoch = 0."""
    lineval = load("lineval")
    seen = _record_lineval(monkeypatch, lineval)
    from core.backbones import build_backbone
    enc = build_backbone("resnet_tiny")
    torch.save({"model": {f"module.encoder.{k}": v for k, v in enc.state_dict().items()}}, tmp_path / "p.pth")
    lineval.main(LIN + ["--start-epoch", "5", "--epochs", "9", "--pretrained", str(tmp_path / "p.pth")])
    assert seen["cfg"].start_epoch == 0
    assert "--start-epoch=5 is reset to 0 by --pretrained" in capsys.readouterr().err
    lineval.main(LIN + ["--start-epoch", "5", "--epochs", "9"])
    assert seen["cfg"].start_epoch == 5


def test_validation_loader_counts_each_image_once(monkeypatch):
    """The val loader is built for exact evaluation (an unpadded sampler over the ranks, sums reduced once):
    with 2 ranks and 5 images the shards hold 3 + 2 images, not 3 + 3."""
    lineval = load("lineval")
    seen = {}
    real = lineval.build_loader

    def recording(ds, bs, **kw):
        seen.setdefault("calls", []).append((ds, kw))
        return real(ds, bs, **kw)

    monkeypatch.setattr(lineval, "build_loader", recording)
    _record_lineval(monkeypatch, lineval)
    lineval.main(LIN)
    (val_ds, kw), = [c for c in seen["calls"] if c[1].get("shuffle") is False]
    assert kw.get("exact_eval") is True and kw.get("drop_last") is False
    from core import dist as cdist
    monkeypatch.setattr(cdist, "is_dist", lambda: True)
    monkeypatch.setattr(cdist, "get_world_size", lambda: 2)
    shards = []
    for r in (0, 1):
        monkeypatch.setattr(cdist, "get_rank", lambda r=r: r)
        shards.append(list(real(list(range(5)), 2, **kw).sampler))
    assert sorted(shards[0] + shards[1]) == [0, 1, 2, 3, 4]


def _readme_rows():
    text = open(os.path.join(FOLDER, "README.md")).read()
    rows = re.findall(r"^\| (\w+\.py) \| `([^`]+)` \| (no effect|unsupported) \|", text, re.M)
    return {(s, o.lstrip("-").replace("-", "_"), k) for s, o, k in rows}


def test_readme_flag_table_lists_the_same_entries():
    want = set()
    for name in ("pretrain", "lineval"):
        m = load(name)
        want |= {(f"{name}.py", d, "no effect") for d in m.NO_EFFECT}
        want |= {(f"{name}.py", d, "unsupported") for d in m.UNSUPPORTED}
    assert _readme_rows() == want
