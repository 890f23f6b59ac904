"""Run life of the four RDM entry points (issue #11, #13.7): bad values and unusable output paths are one-line
errors, a diverged run names the guard, ``--save_checkpoint`` decides whether a checkpoint is written,
``--accelerator cpu`` runs on the CPU, ``--start-epoch`` is reset by ``--pretrained``, and BN trains with 2
processes."""
import importlib.util
import os

import pytest
import torch

RDM = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "papers", "rdm"))
TINY = ["-a", "resnet_tiny", "--image-size", "32", "-j", "0", "--max-steps-per-epoch", "2"]
SOLO = ["--dataset", "cifar10", "--data_dir", "synthetic", "--brightness", "0.4", "--contrast", "0.4",
        "--saturation", "0.4", "--hue", "0.1", "--optimizer", "sgd", "--method", "rdmsimsiam", "--crop_size", "32",
        "--num_crops_per_aug", "1", "1", "--scheduler", "warmup_cosine", "--max_epochs", "1", "--backbone",
        "resnet_tiny", "--batch_size", "8", "--max_steps_per_epoch", "2", "--num_workers", "0",
        "--proj_hidden_dim", "16", "--proj_output_dim", "16"]


def load_script(name):
    spec = importlib.util.spec_from_file_location(f"rdm_lifecycle_{name}", os.path.join(RDM, f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def one_error_line(capsys, fn, *args):
    with pytest.raises(SystemExit) as e:
        fn(*args)
    assert e.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()  # may hold warning lines and a closed progress bar
    err = [ln for ln in lines if "error:" in ln]
    assert len(err) == 1 and lines[-1].startswith("error: "), lines
    return err[0]


@pytest.mark.parametrize("script,argv", [
    ("main_simsiam", ["synthetic", "--epochs", "-1"]),
    ("main_simsiam", ["synthetic", "--start-epoch", "-2"]),
    ("main_lincls", ["synthetic", "--epochs", "-1"]),
    ("main_pretrain", SOLO + ["--max_epochs", "-1"]),
])
def test_negative_epochs_are_one_line(tmp_path, capsys, script, argv):
    out = ["--checkpoint_dir", str(tmp_path)] if script == "main_pretrain" else ["--output-dir", str(tmp_path)]
    line = one_error_line(capsys, load_script(script).main, argv + out)
    assert "must be non-negative" in line


@pytest.mark.parametrize("script", ["main_simsiam", "main_lincls", "main_pretrain", "main_linear"])
def test_output_dir_under_a_regular_file_is_one_line(tmp_path, capsys, script):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    if script in ("main_simsiam", "main_lincls"):
        argv = ["synthetic", "-a", "resnet_tiny", "--output-dir", str(blocker / "out")]
    elif script == "main_pretrain":
        argv = SOLO + ["--checkpoint_dir", str(blocker / "out")]
    else:
        ck = tmp_path / "pre.ckpt"
        torch.save({"state_dict": {}}, ck)
        argv = ["--dataset", "cifar10", "--data_dir", "synthetic", "--backbone", "resnet_tiny", "--optimizer",
                "sgd", "--scheduler", "step", "--lr_decay_steps", "1", "--pretrained_feature_extractor", str(ck),
                "--checkpoint_dir", str(blocker / "out")]
    line = one_error_line(capsys, load_script(script).main, argv)
    assert str(blocker) in line


def test_diverged_simsiam_names_the_guard(tmp_path, capsys):
    """lr 1e30: the weights overflow after step 0, the SVD of step 1 meets non-finite values."""
    line = one_error_line(capsys, load_script("main_simsiam").main, [
        "synthetic", *TINY, "--epochs", "1", "-b", "8", "--dim", "16", "--pred-dim", "8", "--pred-type", "poly",
        "--sigma", "1", "--lr", "1e30", "--output-dir", str(tmp_path)])
    assert "non-finite" in line and "--rdm-guard" in line


@pytest.mark.parametrize("save", [False, True])
def test_pretrain_writes_a_checkpoint_only_with_save_checkpoint(tmp_path, save):
    load_script("main_pretrain").main(SOLO + ["--checkpoint_dir", str(tmp_path), "--name", "r"]
                                      + (["--save_checkpoint"] if save else []))
    run_dir = tmp_path / "rdmsimsiam" / "r"
    assert os.path.isfile(run_dir / "log.txt")
    assert os.path.isfile(run_dir / "r.ckpt") == save


@pytest.mark.parametrize("flag,value", [("--strategy", "dp"), ("--knn_eval", None), ("--accelerator", "tpu")])
def test_pretrain_rejects_what_cannot_work_here(tmp_path, capsys, flag, value):
    argv = SOLO + ["--checkpoint_dir", str(tmp_path), flag] + ([value] if value else [])
    line = one_error_line(capsys, load_script("main_pretrain").main, argv)
    assert flag in line


def test_accelerator_cpu_runs_on_cpu_where_cuda_is_available(tmp_path, monkeypatch):
    """A fake CUDA machine: the launcher would pick cuda:0; ``--accelerator cpu`` must give the CPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda *a: None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    seen = []
    mod = load_script("main_pretrain")
    monkeypatch.setattr(mod, "run", lambda ctx, cfg: seen.append(ctx.device))
    mod.main(SOLO + ["--checkpoint_dir", str(tmp_path), "--accelerator", "cpu"])
    assert seen == [torch.device("cpu")]
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""  # also for the processes it spawns
    seen.clear()
    mod.main(SOLO + ["--checkpoint_dir", str(tmp_path), "--accelerator", "gpu"])
    assert seen[0].type == "cuda"


def test_lincls_pretrained_resets_start_epoch(tmp_path, capsys, monkeypatch):
    """The original main_lincls sets start_epoch = 0 after loading --pretrained: --start-epoch 3 trains
    epochs 0.. as without it."""
    monkeypatch.delenv("SSL_CPU_PROCS", raising=False)
    pre = tmp_path / "pre"
    load_script("main_simsiam").main(["synthetic", *TINY, "--epochs", "1", "-b", "8", "--dim", "16",
                                      "--pred-dim", "8", "--output-dir", str(pre)])
    ckpt = str(pre / "checkpoint_0000.pth.tar")
    lin = tmp_path / "lin"
    load_script("main_lincls").main(["synthetic", *TINY, "--epochs", "1", "-b", "8", "--start-epoch", "3",
                                     "--pretrained", ckpt, "--output-dir", str(lin)])
    state = torch.load(lin / "checkpoint.pth.tar", map_location="cpu", weights_only=False)
    assert state["epoch"] == 1  # one epoch (0) trained; honouring --start-epoch 3 would train none


@pytest.mark.slow
def test_two_process_simsiam_trains_bn_and_warns_on_uneven_batch(tmp_path):
    """2 gloo processes (issue #11.1): the optimizer holds the converted BN's Parameters, so every BN bias
    moves from its initial 0; -b 9 over 2 processes floors to 4 each with one warning line (as the original)."""
    import subprocess
    import sys

    env = dict(os.environ, SSL_CPU_PROCS="2", OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, os.path.join(RDM, "main_simsiam.py"), "synthetic", *TINY, "--epochs", "1",
                        "-b", "9", "--dim", "16", "--pred-dim", "8", "--pred-type", "poly", "--sigma", "1",
                        "--multiprocessing-distributed", "--dist-url", "env://", "--output-dir", str(tmp_path)],
                       env=env, capture_output=True, text=True, timeout=300, cwd=RDM)
    assert r.returncode == 0, r.stderr[-2000:]
    warn = [ln for ln in r.stderr.splitlines() if ln.startswith("warning: --batch-size=9")]
    assert len(warn) == 1
    sd = torch.load(tmp_path / "checkpoint_0000.pth.tar", map_location="cpu", weights_only=False)["state_dict"]
    biases = [k for k in sd if k.endswith(".bias") and ("bn" in k or k.endswith(("fc.1.bias", "fc.4.bias")))]
    assert any("fc.1" in k for k in biases)
    assert biases and all(sd[k].abs().sum() > 0 for k in biases), [k for k in biases if sd[k].abs().sum() == 0]
