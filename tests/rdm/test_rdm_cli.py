"""Each command of papers/rdm in seed_commands.md runs one short job on the built-in data on CPU, and a
pretraining checkpoint loads into the linear evaluations. Flags are only *added* to shorten runs."""
import glob
import importlib.util
import json
import math
import os
import subprocess

import pytest

RDM = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "papers", "rdm"))
VENV_BIN = os.path.abspath(os.path.join(RDM, "..", "..", ".venv", "bin"))


def load_script(name):
    spec = importlib.util.spec_from_file_location(f"rdm_script_{name}", os.path.join(RDM, f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def read_log(d):
    with open(os.path.join(d, "log.txt")) as f:
        return [json.loads(line) for line in f]


SIMSIAM_CMD = ["-a", "resnet50", "--dist-url", "tcp://localhost:10001", "--multiprocessing-distributed",
               "--world-size", "1", "--rank", "0", "--fix-pred-lr", "--pred-type", "poly", "--sigma", "1",
               "--pred-location", "target", "synthetic"]
LINCLS_CMD = ["-a", "resnet50", "--dist-url", "tcp://localhost:10001", "--multiprocessing-distributed",
              "--world-size", "1", "--rank", "0", "--pretrained", "{ckpt}", "--lars", "synthetic"]
SHORT_IMAGENET = ["-a", "resnet_tiny", "--image-size", "32", "-j", "0", "--max-steps-per-epoch", "2"]


def test_main_simsiam_then_main_lincls(tmp_path, monkeypatch, capsys):
    """Both ImageNet commands as printed (run in-process: a subprocess would add two torch imports).
    ``--start-epoch 98`` (an original flag) shortens the default 100-epoch run to its last two epochs, so the
    printed ``checkpoint_0099.pth.tar`` exists and is the one ``main_lincls.py --pretrained`` loads."""
    import torch

    monkeypatch.delenv("SSL_CPU_PROCS", raising=False)  # --multiprocessing-distributed: one CPU process
    pre, lin = tmp_path / "pre", tmp_path / "lin"
    load_script("main_simsiam").main(SIMSIAM_CMD + SHORT_IMAGENET + [
        "--start-epoch", "98", "-b", "8", "--dim", "64", "--pred-dim", "16", "--output-dir", str(pre)])
    assert {"checkpoint_0098.pth.tar", "checkpoint_0099.pth.tar"} <= set(os.listdir(pre))
    log = read_log(pre)
    assert [h["epoch"] for h in log] == [98, 99]
    assert all(k in log[-1] for k in ("erank_online", "erank_target", "rank_differential"))
    assert abs(log[-1]["rank_differential"] - (log[-1]["erank_target"] - log[-1]["erank_online"])) < 1e-9
    # per-epoch cosine of init_lr = 0.05 * 8 / 256, no warmup (spec 3b): epoch 99 of 100
    assert log[-1]["lr"] == pytest.approx(0.05 * 8 / 256 * 0.5 * (1 + math.cos(math.pi * 99 / 100)))
    assert os.path.getsize(pre / "spectra.png") > 1000
    ckpt = str(pre / "checkpoint_0099.pth.tar")
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert (state["epoch"], state["arch"]) == (100, "resnet_tiny") and "optimizer" in state
    assert all(k.startswith(("module.encoder.", "module.predictor.")) for k in state["state_dict"])
    cmd = [c.format(ckpt=ckpt) for c in LINCLS_CMD]
    assert "[your checkpoint path]/checkpoint_0099.pth.tar".replace("[your checkpoint path]", str(pre)) in cmd
    load_script("main_lincls").main(cmd + SHORT_IMAGENET + ["--epochs", "1", "-b", "8", "--output-dir", str(lin)])
    assert "=> loaded pre-trained model" in capsys.readouterr().out
    assert os.path.isfile(lin / "checkpoint.pth.tar")


def test_main_lincls_missing_checkpoint_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        load_script("main_lincls").main(["-a", "resnet_tiny", "--pretrained", str(tmp_path / "nope.pth.tar"),
                                         "synthetic", "--output-dir", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no checkpoint found")


def test_main_pretrain_missing_data_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        load_script("main_pretrain").main([
            "--dataset", "cifar10", "--data_dir", str(tmp_path / "none"), "--brightness", "0.4", "--contrast",
            "0.4", "--saturation", "0.4", "--hue", "0.1", "--optimizer", "sgd", "--method", "rdmsimsiam",
            "--crop_size", "32", "--num_crops_per_aug", "1", "1", "--scheduler", "warmup_cosine",
            "--checkpoint_dir", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cifar10")


def run_sh(script, *pos, extra="", env=None):
    e = {k: v for k, v in os.environ.items() if k not in ("DEVICES", "PRETRAINED")}
    e.update(PATH=VENV_BIN + os.pathsep + e.get("PATH", ""), DATA_DIR="synthetic", OMP_NUM_THREADS="1",
             EXTRA_ARGS=extra, **(env or {}))
    r = subprocess.run(["sh", script, *map(str, pos)], cwd=RDM, env=e, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def short(ckdir, extra=""):
    return (f"--max_epochs 1 --backbone resnet_tiny --batch_size 8 --max_steps_per_epoch 2 --num_workers 0 "
            f"--proj_hidden_dim 64 --proj_output_dim 32 --crop_size 32 --checkpoint_dir {ckdir} {extra}")


def check_run(run_dir):
    ck = glob.glob(os.path.join(run_dir, "*.ckpt"))
    assert len(ck) == 1
    log = read_log(run_dir)
    assert {"val_acc1", "erank_online", "erank_target", "rank_differential"} <= set(log[-1])
    assert os.path.isfile(os.path.join(run_dir, "spectra.png"))
    return ck[0]


@pytest.mark.parametrize("method", ["rdmsimsiam", "rdmbyol"])
def test_cifar_scripts(tmp_path, method):
    run_sh(f"bash_files/pretrain/cifar/{method}.sh", "cifar10", 400, "poly", "target", -1, extra=short(tmp_path))
    check_run(tmp_path / method / f"{method}-cifar10-400ep-poly_-1")


@pytest.mark.parametrize("method,pos", [("rdmsimsiam", (400, "poly", "target", -1)),
                                        ("rdmbyol", (400, "poly", "online", 1))])
def test_imagenet100_scripts_two_processes_then_linear(tmp_path, method, pos):
    """As printed: --devices 0,1 --strategy ddp --sync_batchnorm -> two gloo processes on CPU."""
    r = run_sh(f"bash_files/pretrain/imagenet-100/{method}.sh", *pos, extra=short(tmp_path))
    ckpt = check_run(tmp_path / method / f"{method}-imagenet100-{pos[0]}ep-{pos[1]}_{pos[3]}")
    # two gloo processes really joined one group (core.dist.init_process_group says so on each rank)
    for rank in (0, 1):
        assert f"rank {rank}: joining 2 processes" in r.stderr, r.stderr[-2000:]
    lin = run_sh(f"bash_files/linear/imagenet-100/{method}_linear.sh", env={"PRETRAINED": ckpt},
                 extra=f"--max_epochs 1 --backbone resnet_tiny --batch_size 8 --max_steps_per_epoch 2 "
                       f"--num_workers 0 --crop_size 32 --devices 0 --checkpoint_dir {tmp_path}")
    assert "loaded backbone" in lin.stdout and "sanity check passed" in lin.stdout
    assert glob.glob(str(tmp_path / "linear" / "*" / "*.ckpt"))


@pytest.mark.parametrize("method,pred_hidden", [("simsiam", 512), ("byol", 4096)])
def test_cifar_baseline_scripts_in_process(tmp_path, monkeypatch, method, pred_hidden):
    """The learned-predictor baselines: the script's command (printed with PYTHON=echo) runs in-process."""
    import shlex

    from rdm_lib.models import SoloBYOL

    taus = []
    ema = SoloBYOL.ema_update
    monkeypatch.setattr(SoloBYOL, "ema_update", lambda self, tau: (taus.append(tau), ema(self, tau))[1])
    r = run_sh(f"bash_files/pretrain/cifar/{method}.sh", "cifar10", env={"PYTHON": "echo"},
               extra=short(tmp_path, "--pred_hidden_dim 16"))
    argv = shlex.split(r.stdout)
    assert argv[0].endswith("main_pretrain.py") and f"--pred_hidden_dim {pred_hidden}" in r.stdout
    load_script("main_pretrain").main(argv[1:])
    run_dir = tmp_path / method / f"{method}-cifar10"
    check_run(run_dir)
    assert read_log(run_dir)[-1]["erank_online"] > 0
    # solo lr scaling (script lr x batch 8 x 1 device / 256) and the per-step linear warm-up of
    # warmup_cosine from 3e-5 over 10 epochs x 2 steps: the backbone lr after step 1 of the run
    base = {"simsiam": 0.5, "byol": 1.0}[method] * 8 / 256
    assert read_log(run_dir)[-1]["lr"] == pytest.approx(3e-5 + 1 * (base - 3e-5) / (10 * 2 - 1))
    if method == "byol":  # --auto_resume (printed by the script): a longer run continues from the checkpoint
        # EMA after each of the K = 2 steps: tau_k = 1 - (1 - 0.99)(cos(pi k / K) + 1) / 2 -> 0.99, 0.995
        assert taus == pytest.approx([0.99, 0.995])
        taus.clear()
        load_script("main_pretrain").main(argv[1:] + ["--max_epochs", "2"])
        log = read_log(run_dir)
        assert [h["epoch"] for h in log] == [0, 1]
        # resumed at step 2 of K = 4: 1 - 0.01 (cos(pi/2) + 1) / 2, 1 - 0.01 (cos(3 pi/4) + 1) / 2
        assert taus == pytest.approx([0.995, 1 - 0.01 * (1 - 2 ** -0.5) / 2])
    else:
        assert taus == []


def test_main_simsiam_missing_data_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        load_script("main_simsiam").main(["-a", "resnet_tiny", str(tmp_path / "no_imagenet"), "--output-dir",
                                          str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0]


def test_main_linear_wrong_checkpoint_is_one_line(tmp_path, capsys):
    import torch

    bad = tmp_path / "bad.ckpt"
    torch.save({"state_dict": {"backbone.conv1.weight": torch.zeros(1)}}, bad)
    with pytest.raises(SystemExit) as e:
        load_script("main_linear").main(["--dataset", "cifar10", "--data_dir", "synthetic", "--backbone",
                                         "resnet_tiny", "--pretrained_feature_extractor", str(bad),
                                         "--optimizer", "sgd", "--scheduler", "step", "--lr_decay_steps", "60",
                                         "--checkpoint_dir", str(tmp_path), "--num_workers", "0"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not match --backbone" in err[0]
