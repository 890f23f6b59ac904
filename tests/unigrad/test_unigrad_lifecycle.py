"""Life of a UniGrad run (issue #11): exact resume with DataLoader workers, named checkpoints written only for
the epochs an invocation trained and copied atomically, output paths and bad numbers as one-line errors, the
per-process batch floored with one warning, the `const` EMA schedule."""
import math
import os
import shutil

import pytest
import torch

import paper_import

FOLDER = paper_import.paper_dir("unigrad")
SHORT = ["train_datadir=synthetic", "test_datadir=synthetic", "arch=resnet_tiny", "projector_input_dim=128",
         "projector_hidden_dim=32", "projector_output_dim=32", "image_size=16", "num_samples=16",
         "whole_batch_size=4", "max_steps_per_epoch=2", "warmup_epochs=1", "print_freq=1", "diag_freq=0"]


def load(name):
    return paper_import.load_script("unigrad", f"{name}.py", f"unigrad_life_{name}")


def _weights(path):
    return torch.load(path, weights_only=False)["model"]


def test_resume_with_workers_is_exact(tmp_path, monkeypatch):
    """n_workers=1: resuming from checkpoint_0 gives bitwise the weights of the straight 2-epoch run (with
    persistent workers the resumed epoch's worker RNG differed from the straight run's)."""
    monkeypatch.chdir(FOLDER)
    pretrain = load("pretrain")
    base = ["configs/unigrad.py"] + SHORT + ["n_workers=1", "epochs=2", "save_freq=1"]
    pretrain.main(base + [f"work_dir={tmp_path / 'a'}"])
    pretrain.main(base + [f"work_dir={tmp_path / 'b'}", f"resume_path={tmp_path / 'a' / 'checkpoint_0.pth.tar'}"])
    a, b = _weights(tmp_path / "a" / "latest.pth.tar"), _weights(tmp_path / "b" / "latest.pth.tar")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_never_rewrites_an_older_named_checkpoint(tmp_path, monkeypatch):
    """Resume from checkpoint_1 of a finished 4-epoch run (save_freq 2): checkpoint_1 keeps its bytes (epoch 2);
    only checkpoint_3, an epoch this invocation trained, is written again."""
    monkeypatch.chdir(FOLDER)
    pretrain = load("pretrain")
    work = tmp_path / "w"
    base = ["configs/unigrad.py"] + SHORT + ["n_workers=0", "epochs=4", "save_freq=2", f"work_dir={work}"]
    pretrain.main(base)
    assert sorted(p for p in os.listdir(work) if p.startswith("checkpoint_")) == \
        ["checkpoint_1.pth.tar", "checkpoint_3.pth.tar"]
    named = (work / "checkpoint_1.pth.tar").read_bytes()
    os.utime(work / "checkpoint_3.pth.tar", (0, 0))
    pretrain.main(base + [f"resume_path={work / 'checkpoint_1.pth.tar'}"])
    assert (work / "checkpoint_1.pth.tar").read_bytes() == named
    assert torch.load(work / "checkpoint_1.pth.tar", weights_only=False)["epoch"] == 2
    assert os.path.getmtime(work / "checkpoint_3.pth.tar") > 0
    assert torch.load(work / "checkpoint_3.pth.tar", weights_only=False)["epoch"] == 4


def test_failed_named_copy_leaves_the_previous_file(tmp_path, monkeypatch, capsys):
    """A copy that dies half-way (disk full) leaves the existing named checkpoints intact and no temp file."""
    monkeypatch.chdir(FOLDER)
    pretrain = load("pretrain")
    work = tmp_path / "w"
    base = ["configs/unigrad.py"] + SHORT + ["n_workers=0", "epochs=2", "save_freq=1", f"work_dir={work}"]
    pretrain.main(base)
    before = {n: (work / n).read_bytes() for n in ("checkpoint_0.pth.tar", "checkpoint_1.pth.tar")}

    def half_then_full(fsrc, fdst, *a, **k):
        fdst.write(fsrc.read(1000))
        raise OSError(28, "No space left on device", str(work / "checkpoint_x"))

    monkeypatch.setattr(shutil, "copyfileobj", half_then_full)
    monkeypatch.setattr(shutil, "_fastcopy_sendfile", half_then_full, raising=False)
    with pytest.raises(SystemExit) as e:
        pretrain.main(base + [f"resume_path={work / 'checkpoint_0.pth.tar'}"])
    assert e.value.code == 2 and "No space left" in capsys.readouterr().err
    for n, data in before.items():
        assert (work / n).read_bytes() == data, n
    assert not [p for p in os.listdir(work) if p.startswith(".tmp_")]


def test_work_dir_under_a_file_is_one_error_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(FOLDER)
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit) as e:
        load("pretrain").main(["configs/unigrad.py"] + SHORT + ["epochs=1", f"work_dir={tmp_path / 'file' / 'w'}"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.startswith("error: ") and "\n" not in err and str(tmp_path / "file") in err


def test_lineval_bad_numbers_and_paths_are_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(FOLDER)
    lineval = load("lineval")
    (tmp_path / "file").write_text("x")
    base = ["--data", "synthetic", "-a", "resnet_tiny", "--image-size", "16", "--num-samples", "16", "-j", "0"]
    for extra, msg in ((["--epochs", "-1"], "--epochs"), (["--start-epoch", "-2"], "--start-epoch"),
                       (["-b", "0"], "--batch-size"), (["-j", "-1"], "--workers"), (["-p", "0"], "--print-freq"),
                       (["--max-steps-per-epoch", "0"], "--max-steps-per-epoch"),
                       (["--save_name", str(tmp_path / "file" / "c.pth.tar")], str(tmp_path / "file"))):
        with pytest.raises(SystemExit) as e:
            lineval.main(base + extra)
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and err.startswith("error: ") and "\n" not in err and msg in err, (extra, err)


def test_batch_not_divisible_is_floored_with_one_warning(capsys):
    from core.dist import DistContext
    from unigrad_lib.launch import per_rank_batch
    ctxs = [DistContext(r, r, 3, torch.device("cpu")) for r in range(3)]
    assert [per_rank_batch(1024, c, "whole_batch_size") for c in ctxs] == [341] * 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: whole_batch_size=1024") and "341" in err[0]
    assert per_rank_batch(1024, ctxs[0], "whole_batch_size") == 341
    assert per_rank_batch(8, DistContext(0, 0, 2, torch.device("cpu")), "whole_batch_size") == 4
    capsys.readouterr()
    from core.errors import UserError
    with pytest.raises(UserError, match="whole_batch_size=2"):
        per_rank_batch(2, DistContext(1, 1, 3, torch.device("cpu")), "whole_batch_size")


def test_const_momentum_schedule(monkeypatch, tmp_path):
    """Original adjust_mm: 'cos' = 1 - (1 - b)(cos(pi t / T) + 1) / 2, 'const' = b at every step."""
    from unigrad_lib.config import adjust_mm, load_config
    T = 100
    for t in (0, 1, 37, 50, 99, 100):
        assert adjust_mm(0.99, t, T, "const") == 0.99
        assert math.isclose(adjust_mm(0.99, t, T, "cos"), 1 - 0.01 * (math.cos(math.pi * t / T) + 1) / 2,
                            rel_tol=0, abs_tol=1e-15)
    cfg_path = os.path.join(FOLDER, "configs", "unigrad.py")
    assert load_config(cfg_path).mm_schedule == "cos"
    from core.errors import UserError
    with pytest.raises(UserError, match="mm_schedule"):
        load_config(cfg_path, ["mm_schedule=linear"])
    # the script applies it: before_step leaves the EMA momentum at base_momentum under 'const'
    monkeypatch.chdir(FOLDER)
    pretrain = load("pretrain")
    seen = {}
    monkeypatch.setattr(pretrain, "train", lambda model, opt, loader, ecfg, ctx, before_step=None, **kw:
                        seen.update(model=model, before_step=before_step))
    pretrain.main(["configs/unigrad.py"] + SHORT + ["epochs=3", "n_workers=0", "mm_schedule=const", f"work_dir={tmp_path}"])
    inner = getattr(seen["model"], "module", seen["model"])
    for step in (0, 3, 5):
        seen["before_step"](step, 6)
        assert inner.mm == 0.996
