"""The seed's commands on the built-in data on CPU: run_pretrain.sh and run_linear.sh with 2 gloo processes,
resume (F restored), original checkpoint layout in lineval, one-line errors."""
import json
import os
import subprocess
import sys

import pytest
import torch

from core.errors import UserError

import paper_import

HERE = os.path.dirname(os.path.abspath(__file__))
FOLDER = os.path.abspath(os.path.join(HERE, "..", "..", "papers", "unigrad"))
SHORT = ["train_datadir=synthetic", "test_datadir=synthetic", "arch=resnet_tiny", "projector_input_dim=128",
         "projector_hidden_dim=32", "projector_output_dim=32", "image_size=32", "num_samples=32", "n_workers=0",
         "whole_batch_size=8", "max_steps_per_epoch=1", "warmup_epochs=1", "print_freq=1", "save_freq=1"]


def env():
    e = dict(os.environ)
    e["PATH"] = os.path.dirname(sys.executable) + os.pathsep + e.get("PATH", "")
    e["PYTHON"] = sys.executable
    e["OMP_NUM_THREADS"] = "1"
    e["PORT"] = str(__import__("core.dist", fromlist=["free_port"]).free_port())
    return e


def load_script(name):
    """Import a script of the folder under a repo-unique module name (in-process runs are cheaper)."""
    return paper_import.load_script("unigrad", f"{name}.py", f"unigrad_script_{name}")


def run(cmd, cwd=FOLDER, timeout=240):
    """Run a command; retry once with a fresh PORT if another process took the rendezvous port meanwhile."""
    for attempt in range(2):
        r = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)
        if r.returncode == 0 or "address already in use" not in r.stderr.lower():
            return r
    return r


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    work = tmp_path_factory.mktemp("pre")
    r = run(["./run_pretrain.sh", "./configs/unigrad.py", "2"] + SHORT +
            ["epochs=2", "knn_freq=2", f"work_dir={work}"])
    assert r.returncode == 0, r.stderr[-3000:]
    return work


def test_run_pretrain_two_processes(pretrained):
    logs = [json.loads(l) for l in open(pretrained / "log.txt")]
    assert [l["epoch"] for l in logs] == [0, 1]
    assert "knn_top1" in logs[1] and 0 <= logs[1]["knn_top1"] <= 100
    # 1 step per epoch, T = 2, Tw = 1, init lr = 0.05 * 8 / 256: step 0 at 1e-3 * init, step 1 at init
    init = 0.05 * 8 / 256
    assert abs(logs[0]["lr"] - 1e-3 * init) < 1e-12 and abs(logs[1]["lr"] - init) < 1e-12
    # EMA momentum 1 - 0.004 (cos(pi t / T) + 1) / 2: 0.996 at step 0, 0.998 at step 1
    assert abs(logs[0]["train_mm"] - 0.996) < 1e-6 and abs(logs[1]["train_mm"] - 0.998) < 1e-6
    for k in ("train_loss", "train_pos_sim", "train_eff_rank", "train_align", "train_uniform"):
        assert k in logs[0]
    assert {"latest.pth.tar", "checkpoint_0.pth.tar", "checkpoint_1.pth.tar"} <= set(os.listdir(pretrained))
    ck = torch.load(pretrained / "latest.pth.tar", weights_only=False)
    assert int(ck["model"]["module.F_count"]) == 2 and torch.equal(ck["F"], ck["model"]["module.F"])
    assert any(k.startswith("module.momentum_encoder.") for k in ck["model"])
    assert abs(torch.trace(ck["F"]).item() - 1.0) < 1e-4  # EMA of trace-1 matrices


def test_knn_eval_of_a_checkpoint(pretrained, monkeypatch, capsys):
    monkeypatch.chdir(FOLDER)
    load_script("pretrain").main(["configs/unigrad.py"] + SHORT + [
        "knn_eval=True", f"resume_path={pretrained / 'latest.pth.tar'}", f"work_dir={pretrained / 'knn'}"])
    out = capsys.readouterr().out
    assert "kNN top-1 of" in out
    # the same weights (latest = after epoch 2) and kNN protocol as the monitor of the 2-process run at epoch 2:
    # the same accuracy, here on one process
    logged = [json.loads(l) for l in open(pretrained / "log.txt")][1]["knn_top1"]
    assert float(out.strip().split()[-1]) == pytest.approx(logged, abs=0.006)  # printed with 2 decimals


def test_run_linear_two_processes(pretrained, tmp_path):
    r = run(["./run_linear.sh", str(pretrained / "latest.pth.tar"), "synthetic", "2", "-a", "resnet_tiny",
             "--epochs", "1", "-b", "16", "--image-size", "32", "--num-samples", "32", "-j", "0",
             "--max-steps-per-epoch", "1", "--save_name", str(tmp_path / "checkpoint.pth.tar")])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "sanity check passed" in r.stdout and "best Acc@1" in r.stdout
    for rank in (0, 1):  # two gloo processes joined one group
        assert f"rank {rank}: joining 2 processes" in r.stderr
    best = torch.load(tmp_path / "model_best.pth.tar", weights_only=False)
    # one epoch: its validation accuracy is the best one, printed and saved in model_best
    epoch0 = float(r.stdout.split("Epoch 0: * Acc@1")[1].split()[0])
    printed = float(r.stdout.split("best Acc@1")[1].split()[0])
    assert epoch0 == printed and best["best_acc1"] == pytest.approx(printed, abs=1e-3)


def test_lineval_loads_original_layout(tmp_path):
    lineval = load_script("lineval")
    from core.backbones import build_backbone
    src = build_backbone("resnet_tiny")
    for p in src.parameters():
        torch.nn.init.normal_(p)
    names = {"conv1": 0, "bn1": 1, "layer1": 4, "layer2": 5, "layer3": 6, "layer4": 7}
    state = {f"module.encoder.{names[k.split('.')[0]]}.{k.split('.', 1)[1]}": v for k, v in src.state_dict().items()}
    state["module.momentum_encoder.0.weight"] = torch.zeros(1)
    torch.save({"model": state, "F": None}, tmp_path / "orig.pth.tar")
    clf = lineval.build_classifier("resnet_tiny", 10)
    lineval.load_pretrained(clf, str(tmp_path / "orig.pth.tar"))
    for k, v in src.state_dict().items():
        assert torch.equal(clf.state_dict()[k], v), k
    torch.save({"model": {"module.encoder.9.weight": torch.zeros(1)}}, tmp_path / "bad.pth.tar")
    with pytest.raises(UserError):
        lineval.load_pretrained(clf, str(tmp_path / "bad.pth.tar"))
    # same names, other shapes (another --arch): a one-line error, not a load_state_dict traceback
    state["module.encoder.0.weight"] = torch.zeros(1, 1, 1, 1)
    torch.save({"model": state}, tmp_path / "shape.pth.tar")
    with pytest.raises(UserError, match="differ in shape"):
        lineval.load_pretrained(clf, str(tmp_path / "shape.pth.tar"))


def test_lineval_flags_and_defaults():
    p = load_script("lineval").get_parser()
    a = p.parse_args(["--data", "d"])
    want = dict(arch="resnet50", workers=5, epochs=90, batch_size=4096, lr=0.1, momentum=0.9, weight_decay=0.0,
                print_freq=10, resume="", evaluate=False, world_size=-1, rank=-1, dist_url="env://",
                dist_backend="nccl", seed=None, gpu=None, multiprocessing_distributed=False, pretrained="",
                lars=False, slurm=False, port=29501, save_name="checkpoint.pth.tar")
    assert {k: getattr(a, k) for k in want} == want
    a = p.parse_args(["--data", "d", "-a", "resnet18", "-j", "2", "-b", "8", "--wd", "1e-4", "-e", "--lars",
                      "--slurm", "x", "--save_name", "s.pth"])
    assert (a.arch, a.workers, a.batch_size, a.weight_decay, a.evaluate, a.lars, a.slurm, a.save_name) == \
        ("resnet18", 2, 8, 1e-4, True, True, "x", "s.pth")


def test_one_line_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(FOLDER)
    pretrain, lineval = load_script("pretrain"), load_script("lineval")
    for args, msg in ((["configs/nope.py"], "config file"), (["configs/unigrad.py", "lambd"], "key=value"),
                      (["configs/unigrad.py", "form=nope"], "form must be"),
                      (["configs/unigrad.py", f"work_dir={tmp_path}"], "does not exist")):
        with pytest.raises(SystemExit) as e:
            pretrain.main(args)
        err = capsys.readouterr().err
        assert e.value.code == 2 and msg in err and err.strip().count("\n") == 0, err
    with pytest.raises(SystemExit) as e:
        lineval.main(["--data", "synthetic", "--pretrained", str(tmp_path / "x.pth")])
    assert e.value.code == 2 and "no checkpoint" in capsys.readouterr().err


@pytest.mark.slow
def test_seed_command_eight_processes(tmp_path):
    """./run_pretrain.sh ./configs/unigrad.py 8 as printed (+ shortening keys): 8 gloo processes on CPU."""
    r = run(["./run_pretrain.sh", "./configs/unigrad.py", "8"] + SHORT + ["whole_batch_size=16", "epochs=1",
                                                                          f"work_dir={tmp_path}"], timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    ck = torch.load(tmp_path / "latest.pth.tar", weights_only=False)
    assert int(ck["model"]["module.F_count"]) == 1


def test_resume_is_exact(tmp_path, monkeypatch, capsys):
    """Resume from the epoch-0 checkpoint of a 2-epoch run == the straight run: model, momentum branch, F."""
    monkeypatch.chdir(FOLDER)
    pretrain = load_script("pretrain")
    base = ["configs/unigrad.py"] + SHORT + ["whole_batch_size=4", "max_steps_per_epoch=2", "diag_freq=0"]
    pretrain.main(base + ["epochs=2", f"work_dir={tmp_path / 'straight'}"])
    # checkpoint_0.pth.tar is the state after epoch 0 of the straight run: resume from it in another folder
    pretrain.main(base + ["epochs=2", f"work_dir={tmp_path / 'part'}",
                          f"resume_path={tmp_path / 'straight' / 'checkpoint_0.pth.tar'}"])
    capsys.readouterr()
    a = torch.load(tmp_path / "straight" / "latest.pth.tar", weights_only=False)
    b = torch.load(tmp_path / "part" / "latest.pth.tar", weights_only=False)
    assert int(b["model"]["module.F_count"]) == 4
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert torch.equal(a["F"], b["F"])
