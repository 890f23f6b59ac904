"""Flag surface and run life of main_moco.py / main_lincls.py (issues #11, #12, #13.10): every option is used or
listed in NO_EFFECT / UNSUPPORTED (and in the README table); main_lincls --amp is an error (it would do nothing);
--start-epoch is reset by --pretrained; the batch is floored (main_lincls) or asserted (main_moco) as the fork
does; cudnn flags as the fork (unconditional, no seed warning); bad paths and numbers are one line."""
import argparse
import os
import re
import warnings

import pytest
import torch

import au_helpers
from flag_surface import assert_flag_surface

PAPER = au_helpers.PAPER
LIB = [os.path.join(PAPER, "au_lib", n) for n in ("config.py", "launch.py", "builder.py", "nets.py")]
MOCO = ["synthetic", "-a", "resnet_tiny", "--image-size", "16", "-b", "4", "--moco-k", "8", "--moco-dim", "8",
        "--epochs", "1", "--max-steps", "1", "-j", "0", "--num-samples", "8"]
LIN = ["synthetic", "-a", "resnet_tiny", "--image-size", "16", "-b", "4", "--epochs", "3", "--max-steps", "1",
       "-j", "0", "--num-samples", "8"]


def moco():
    return au_helpers.load_script("main_moco")


def lincls():
    return au_helpers.load_script("main_lincls")


def test_flag_surfaces():
    assert_flag_surface(moco().moco_parser(), [os.path.join(PAPER, "main_moco.py")] + LIB, moco().NO_EFFECT,
                        moco().UNSUPPORTED)
    assert_flag_surface(lincls().lincls_parser(), [os.path.join(PAPER, "main_lincls.py")] + LIB,
                        lincls().NO_EFFECT, lincls().UNSUPPORTED)


def test_readme_flag_table_lists_the_same_entries():
    text = open(os.path.join(PAPER, "README.md")).read()
    rows = re.findall(r"^\| (\w+\.py) \| `([^`]+)` \| (no effect|unsupported) \|", text, re.M)
    got = {(s, o.lstrip("-").replace("-", "_"), k) for s, o, k in rows}
    want = set()
    for name, mod in (("main_moco.py", moco()), ("main_lincls.py", lincls())):
        want |= {(name, d, "no effect") for d in mod.NO_EFFECT} | {(name, d, "unsupported") for d in mod.UNSUPPORTED}
    assert got == want and want


def _one_error_line(capsys, fn, argv):
    with pytest.raises(SystemExit) as e:
        fn(argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.startswith("error: ") and "\n" not in err, err
    return err


def test_lincls_amp_is_rejected(capsys):
    for mode in ("auto", "bf16", "fp16"):
        err = _one_error_line(capsys, lincls().main, LIN + ["--amp", mode])
        assert f"--amp={mode} is not supported" in err


def _record_lincls(monkeypatch):
    mod = lincls()
    seen = {}

    def record(model, optimizer, train_loader, val_loader, cfg, ctx, **kw):
        seen.update(cfg=cfg, optimizer=optimizer, model=model)
        return {"best_acc1": 0.0}

    monkeypatch.setattr(mod, "run_linear_eval", record)
    return mod, seen


def test_lincls_start_epoch_reset_by_pretrained(monkeypatch, tmp_path, capsys):
    """The fork's main_lincls sets args.start_epoch = 0 when it loads --pretrained."""
    mod, seen = _record_lincls(monkeypatch)
    from au_lib.nets import net_constructor
    enc = net_constructor("resnet_tiny")(num_classes=8)
    torch.save({"state_dict": {f"module.encoder_q.{k}": v for k, v in enc.state_dict().items()}},
               tmp_path / "moco.pth.tar")
    mod.main(LIN + ["--start-epoch", "2", "--pretrained", str(tmp_path / "moco.pth.tar")])
    assert seen["cfg"].start_epoch == 0
    assert "--start-epoch=2 is reset to 0 by --pretrained" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)  # the random-init save folder is results/random_init/... under the cwd
    mod.main(LIN + ["--start-epoch", "2"])
    assert seen["cfg"].start_epoch == 2


def _ns(parser, argv):
    return parser.parse_args(argv)


def test_batch_split_floor_for_lincls_assert_for_moco(capsys):
    from au_lib import launch
    from core.errors import UserError
    a = _ns(lincls().lincls_parser(), ["d", "-b", "256", "--gpus", "0", "1", "2", "--multiprocessing-distributed"])
    if torch.cuda.is_available():
        pytest.skip("--gpus lists CUDA devices on this machine")
    launch.prepare(a, floor_batch=True)
    assert a.batch_size == 85 and a.workers == 11
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: --batch-size=256") and "85" in err[0]
    m = _ns(moco().moco_parser(), ["d", "-b", "128", "--gpus", "0", "1", "2", "--multiprocessing-distributed"])
    with pytest.raises(UserError, match="not divisible"):
        launch.prepare(m)


def test_cudnn_flags_as_the_fork_and_no_seed_warning():
    """The fork sets cudnn.deterministic and cudnn.benchmark in every worker, seed or not, and its launcher
    only seeds (no 'This will turn on the CUDNN deterministic setting' warning, which would be untrue)."""
    from au_lib import launch
    from core.dist import DistContext
    old = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    try:
        torch.backends.cudnn.deterministic = torch.backends.cudnn.benchmark = False
        launch.worker_setup(DistContext(), argparse.Namespace(seed=None))
        assert torch.backends.cudnn.deterministic and torch.backends.cudnn.benchmark
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = old
    a = _ns(moco().moco_parser(), ["d", "--seed", "3"])
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        launch.prepare(a)
    assert not [x for x in w if "CUDNN" in str(x.message) or "seed" in str(x.message)]


def test_bad_numbers_and_paths_are_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    for argv, msg in ((["--start-epoch", "-1"], "--start-epoch"), (["--max-steps", "0"], "--max-steps"),
                      (["-p", "0"], "--print-freq"), (["--epochs", "-3"], "--epochs"),
                      (["--results-dir", str(tmp_path / "file" / "r")], str(tmp_path / "file"))):
        assert msg in _one_error_line(capsys, moco().main, MOCO + argv)
    assert "--start-epoch" in _one_error_line(capsys, lincls().main, LIN + ["--start-epoch", "-1"])
    # the save folder <dir of pretrained>/lincls/... cannot be made: 'lincls' is a file
    torch.save({"state_dict": {}}, tmp_path / "moco.pth.tar")
    (tmp_path / "lincls").write_text("x")
    assert str(tmp_path / "lincls") in _one_error_line(
        capsys, lincls().main, LIN + ["--pretrained", str(tmp_path / "moco.pth.tar")])
