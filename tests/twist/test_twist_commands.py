"""The seed's commands of papers/twist run short jobs on the built-in data on CPU (spec 10.5,
shared/seed_commands.md). Printed flags are kept; flags that shorten the run are appended."""
import os
import pickle
import signal
import subprocess
import sys
import time

import pytest
import torch

from core import dist

import paper_import

HERE = os.path.dirname(os.path.abspath(__file__))
TWIST = os.path.abspath(os.path.join(HERE, "..", "..", "papers", "twist"))
PY = sys.executable
SHORT = ["--backbone", "resnet_tiny", "--img_size", "32", "--batch-size", "2", "--dim", "16", "--hid_dim", "32",
         "--max_steps_per_epoch", "2", "--num_workers", "0", "--num_samples", "16", "--amp", "0",
         "--local_crops_number", "2"]


def env():
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return e


def run(cmd, cwd=TWIST, timeout=600):
    p = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{' '.join(cmd)}\nstdout:\n{p.stdout[-3000:]}\nstderr:\n{p.stderr[-3000:]}"
    return p.stdout + p.stderr


def launch(n, *extra):
    return [PY, "-m", "torch.distributed.launch", f"--nproc_per_node={n}", *extra]


def check_checkpoint(out, teacher=False):
    ck = torch.load(os.path.join(out, "checkpoint.pth"), map_location="cpu", weights_only=False)
    for k in ("model", "backbone", "optimizer", "epoch", "args"):
        assert k in ck
    assert ("teacher" in ck and "teacher_backbone" in ck) == teacher
    assert set(ck["backbone"]) == {k[len("backbone."):] for k in ck["model"] if k.startswith("backbone.")}
    assert any(k.startswith("projection_heads.norm.") for k in ck["model"])
    return ck


def test_barlow_single_node_launch_two_processes(tmp_path):
    out = str(tmp_path / "barlow")
    cmd = launch(2, "--use_env") + ["train.py", "--data-path", "synthetic", "--output_dir", out, "--aug", "barlow",
                                    "--batch-size", "256", "--dim", "32768", "--epochs", "800"]
    log = run(cmd + SHORT + ["--epochs", "2", "--mme_epochs", "1"])
    assert "Switching to Harder Multi Crop" in log
    ck = check_checkpoint(out)
    assert ck["epoch"] == 1 and ck["args"]["aug"] == "barlow" and ck["args"]["lr"] == pytest.approx(0.5 * 4 / 256)
    assert os.path.isfile(os.path.join(out, "mme_ckpt.pth"))
    lines = open(os.path.join(out, "log.txt")).read().strip().splitlines()
    assert len(lines) == 3 and '"dim": 16' in lines[0]  # args line, then one line per epoch
    assert "train_threshold" in lines[2] and "train_kl" in lines[1]
    import json

    epoch1 = json.loads(lines[1])  # core collapse diagnostics of the global views, over both ranks
    assert {"eff_rank", "l2_std", "align", "uniform", "pos_sim"} <= set(epoch1) and epoch1["eff_rank"] >= 1.0


def test_design_usage_line_starts_and_shows_progress(tmp_path):
    # cd papers/twist && python train.py --backbone vit_s (run with the script's path so outputs go to tmp);
    # stop as soon as the progress bar of epoch 0 is drawn (tqdm redraws with \r, so read raw bytes)
    p = subprocess.Popen([PY, os.path.join(TWIST, "train.py"), "--backbone", "vit_s"], cwd=tmp_path, env=env(),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    seen, t0 = b"", time.time()
    try:
        while time.time() - t0 < 300 and b"twist epoch 0" not in seen:
            chunk = os.read(p.stdout.fileno(), 4096)
            if not chunk:
                break
            seen += chunk
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    text = seen.decode(errors="replace")
    assert "number of backbone params:21.6" in text
    assert "twist epoch 0" in text, text[-2000:]


@pytest.fixture(scope="module")
def r50_ckpt(tmp_path_factory):
    """A train.py-format checkpoint of a (random) ResNet-50 and a small ImageFolder tree."""
    from core.backbones import build_backbone
    from core.data import write_imagefolder

    d = tmp_path_factory.mktemp("r50")
    bb = build_backbone("resnet50")
    path = str(d / "checkpoint.pth")
    torch.save({"model": {"backbone." + k: v for k, v in bb.state_dict().items()}, "backbone": bb.state_dict(),
                "epoch": 0, "args": {}}, path)
    data = write_imagefolder(str(d / "data"), num_train=40, num_val=10, image_size=32)
    with open(os.path.join(data, "1percent.txt"), "w") as f:  # SimCLR list format: one file name per line
        names = sorted(os.listdir(os.path.join(data, "train", "circle")))[:2]
        f.write("\n".join(names) + "\n")
    return path, data


EVAL_SHORT = ["--img_size", "32", "--workers", "0", "--max_steps_per_epoch", "1", "--batch-size", "4"]


def test_linear_eval_command(r50_ckpt, tmp_path):
    ckpt, data = r50_ckpt
    out = str(tmp_path / "linear_multihead") + "/"
    log = run([PY, "evaluate.py", data, ckpt, "--weight-decay", "0", "--checkpoint-dir", out, "--batch-size", "1024",
               "--val_epoch", "1", "--lr-classifier", "0.2"] + EVAL_SHORT + ["--epochs", "2"])
    assert "loaded pre-trained backbone" in log and "sanity check passed" in log and "best top-1" in log
    stats = open(os.path.join(out, "stats.txt")).read().strip().splitlines()
    assert len(stats) == 2
    # auto-resume from checkpoint-dir: a rerun with more epochs continues at epoch 2
    log = run([PY, "evaluate.py", data, ckpt, "--checkpoint-dir", out] + EVAL_SHORT + ["--epochs", "3"])
    assert "resumed from" in log


def test_semi_supervised_one_percent_command(r50_ckpt, tmp_path):
    ckpt, data = r50_ckpt
    log = run([PY, "evaluate.py", data, ckpt, "--weights", "finetune", "--lr-backbone", "0.04", "--lr-classifier",
               "0.2", "--train-percent", "1", "--weight-decay", "0", "--epochs", "20", "--backbone", "resnet50",
               "--checkpoint-dir", str(tmp_path / "semi")] + EVAL_SHORT + ["--epochs", "1"])
    assert "finetune epoch 0" in log and "best top-1" in log
    _check_finetune(tmp_path / "semi", "0.04", ckpt)


def _check_finetune(out, lr_bb, pretrained):
    """The semi-supervised commands fine-tune: the classifier group at --lr-classifier 0.2 and the backbone
    group at --lr-backbone, no weight decay, SGD momentum 0.9; the backbone moved away from the checkpoint."""
    ck = torch.load(os.path.join(out, "checkpoint.pth"), weights_only=False)
    groups = [(g["name"], g["initial_lr"], g["weight_decay"], g["momentum"]) for g in ck["optimizer"]["param_groups"]]
    assert groups == [("classifier", 0.2, 0.0, 0.9), ("backbone", float(lr_bb), 0.0, 0.9)]
    start = torch.load(pretrained, weights_only=False)["backbone"]
    model = ck["model"] if "model" in ck else ck["state_dict"]
    now = {k.split("backbone.", 1)[1]: v for k, v in model.items() if "backbone." in k}
    assert now.keys() == start.keys()
    assert not torch.equal(now["layer1.0.conv1.weight"], start["layer1.0.conv1.weight"])
    assert len(open(os.path.join(out, "stats.txt")).read().strip().splitlines()) == 1  # 1 epoch, 1 validation


def test_detectron2_converter_command(r50_ckpt, tmp_path):
    ckpt, _ = r50_ckpt
    out = str(tmp_path / "r50.pkl")
    run([PY, "detection/convert-pretrain-to-detectron2.py", ckpt, out])
    with open(out, "rb") as f:
        d = pickle.load(f)
    assert d["__author__"] == "TWIST" and d["matching_heuristics"] is True
    m = d["model"]
    assert "stem.conv1.weight" in m and "stem.conv1.norm.weight" in m
    assert "res2.0.conv1.norm.running_mean" in m and "res2.0.shortcut.weight" in m
    assert "res5.2.conv3.norm.bias" in m and "res2.0.shortcut.norm.weight" in m
    assert not any(k.startswith("layer") or ".bn" in k for k in m)


def test_eval_only_clustering_cli(tmp_path, capsys):
    out = str(tmp_path / "cl")
    load_script("train.py", "twist_train_script_cl").main(
        ["--output_dir", out] + SHORT + ["--dim", "10", "--epochs", "1", "--local_crops_number", "0"])
    log = run([PY, "train.py", "--eval_only", "1", "--resume", os.path.join(out, "checkpoint.pth"),
               "--output_dir", out] + SHORT + ["--dim", "10", "--num_samples", "20"])
    assert "NMI:" in log and "ACC-Top5" in log
    for f in ("match.npy", "mapped_preds.npy", "ordered_real_labels.npy", "ordered_pred_labels.npy",
              "confusion.pdf"):
        assert os.path.isfile(os.path.join(out, f)), f
    # --inference_only: top-10 clusters of val image 3 named through the saved matching (in-process)
    train = load_script("train.py", "twist_train_script_inf")
    train.main(["--inference_only", "1", "--resume", os.path.join(out, "checkpoint.pth"), "--match_path",
                os.path.join(out, "match.npy"), "--img_path", "3"] + SHORT + ["--dim", "10"])
    text = capsys.readouterr().out
    assert "Top 1:" in text and "Top 10:" in text and "Target: diamond" in text  # synthetic class 3


def load_script(rel, name):
    return paper_import.load_script("twist", rel, name)


def test_bad_inputs_give_one_line_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written to the repository
    train = load_script("train.py", "twist_train_script")
    evaluate = load_script("evaluate.py", "twist_evaluate_script")
    conv = load_script("detection/convert-pretrain-to-detectron2.py", "twist_d2_convert_script")
    vitlin = load_script("evaluate_vitlinear.py", "twist_vitlinear_script")
    cases = [
        (train.main, ["--data-path", str(tmp_path / "missing")] + SHORT, "does not exist"),
        (train.main, ["--backbone", "nope", "--num_workers", "0"], "unknown backbone"),
        (train.main, ["--eval_only", "1", "--resume", str(tmp_path / "x.pth")] + SHORT, "does not exist"),
        (train.main, ["--backbone", "vit_t", "--img_size", "40"] + SHORT[2:], "multiples of --patch-size"),
        (train.main, SHORT + ["--bunch-size", "3", "--epochs", "1"], "multiple of --batch-size"),
        (evaluate.main, ["synthetic", str(tmp_path / "x.pth")], "does not exist"),
        (conv.main, ["a.pth", "b.txt"], ".pkl"),
        (vitlin.main, ["--val_freq", "0"], "must be positive"),
    ]
    for fn, argv, msg in cases:
        with pytest.raises(SystemExit) as e:
            fn(argv)
        assert e.value.code == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert err and err[-1].startswith("error:") and msg in err[-1], (argv, err[-3:])


# ------------------------------------------------------------------------------------------------ slow
@pytest.mark.slow
def test_barlow_command_eight_processes(tmp_path):
    out = str(tmp_path / "b8")
    cmd = launch(8, "--use_env") + ["train.py", "--data-path", "synthetic", "--output_dir", out, "--aug", "barlow",
                                    "--batch-size", "256", "--dim", "32768", "--epochs", "800"]
    run(cmd + SHORT + ["--batch-size", "1", "--epochs", "1", "--max_steps_per_epoch", "1", "--num_samples", "8"])
    check_checkpoint(out)


MULTI = ["--nnodes=1", "--node_rank=0", "--master_addr=127.0.0.1"]


@pytest.mark.slow
def test_multi_node_default_command(tmp_path):
    out = str(tmp_path / "mc")
    cmd = launch(2, "--use_env", *MULTI, f"--master_port={dist.free_port()}") + [
        "train.py", "--data-path", "synthetic", "--output_dir", out]
    run(cmd + SHORT + ["--epochs", "1"])
    check_checkpoint(out)


@pytest.mark.slow
def test_resnet50w2_command(tmp_path):
    out = str(tmp_path / "w2")
    cmd = launch(2, "--use_env", *MULTI, f"--master_port={dist.free_port()}") + [
        "train.py", "--data-path", "synthetic", "--output_dir", out, "--backbone", "resnet50w2", "--batch-size",
        "60", "--bunch-size", "240", "--epochs", "250", "--mme_epochs", "200"]
    short = [a for a in SHORT]
    short[short.index("resnet_tiny")] = "resnet50w2"
    run(cmd + short + ["--batch-size", "2", "--bunch-size", "4", "--epochs", "2", "--mme_epochs", "1",
                       "--max_steps_per_epoch", "1"])
    check_checkpoint(out)


VIT = {"vit_s": ["--backbone", "vit_s", "--batch-size", "64", "--bunch-size", "256", "--clip_norm", "3.0", "--epochs",
                 "300", "--mme_epochs", "300", "--lam1", "-0.6", "--lam2", "1.0", "--local_crops_number", "6", "--lr",
                 "0.0003", "--momentum_start", "0.996", "--momentum_end", "1.0", "--optim", "admw",
                 "--use_momentum_encoder", "1", "--weight_decay", "0.06", "--weight_decay_end", "0.12"],
       "vit_b": ["--backbone", "vit_b", "--batch-size", "32", "--bunch-size", "256", "--clip_norm", "3.0", "--epochs",
                 "300", "--mme_epochs", "300", "--lam1", "-0.6", "--lam2", "1.0", "--local_crops_number", "10", "--lr",
                 "0.00075", "--momentum_start", "0.996", "--momentum_end", "1.0", "--optim", "admw",
                 "--use_momentum_encoder", "1", "--weight_decay", "0.06", "--weight_decay_end", "0.06",
                 "--drop_path", "0.1"]}
VIT_SHORT = ["--img_size", "112", "--batch-size", "2", "--dim", "16", "--hid_dim", "32", "--epochs", "1",
             "--max_steps_per_epoch", "1", "--num_workers", "0", "--num_samples", "16", "--local_crops_number", "2",
             "--amp", "0"]


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["vit_s", "vit_b"])
def test_vit_commands_then_vit_linear(tmp_path, arch):
    out = str(tmp_path / arch)
    cmd = launch(2, "--use_env", *MULTI, f"--master_port={dist.free_port()}") + [
        "train.py", "--data-path", "synthetic", "--output_dir", out] + VIT[arch]
    run(cmd + VIT_SHORT)
    ck = check_checkpoint(out, teacher=True)
    assert ck["args"]["weight_decay_end"] == (0.12 if arch == "vit_s" else 0.06)
    lr = "0.02" if arch == "vit_s" else "0.0015"
    log = run(launch(2) + ["evaluate_vitlinear.py", "--arch", arch, "--pretrained_weights",
                           os.path.join(out, "checkpoint.pth"), "--lr", lr, "--data_path", "synthetic",
                           "--output_dir", out, "--epochs", "1", "--batch_size_per_gpu", "2", "--img_size", "112",
                           "--max_steps_per_epoch", "1", "--num_workers", "0"])
    assert "Top-1 test accuracy" in log


@pytest.mark.slow
@pytest.mark.parametrize("pct,lr_bb,epochs", [("10", "0.02", "20"), ("100", "0.01", "30")])
def test_semi_supervised_other_commands(r50_ckpt, tmp_path, pct, lr_bb, epochs):
    ckpt, data = r50_ckpt
    if pct == "10":
        names = sorted(os.listdir(os.path.join(data, "train", "ring")))[:3]
        with open(os.path.join(data, "10percent.txt"), "w") as f:
            f.write("\n".join(names) + "\n")
    run([PY, "evaluate.py", data, ckpt, "--weights", "finetune", "--lr-backbone", lr_bb, "--lr-classifier", "0.2",
         "--train-percent", pct, "--weight-decay", "0", "--epochs", epochs, "--backbone", "resnet50",
         "--checkpoint-dir", str(tmp_path / "semi")] + EVAL_SHORT + ["--epochs", "1"])
    _check_finetune(tmp_path / "semi", lr_bb, ckpt)


def test_resume_is_exact_across_the_self_labeling_switch(tmp_path):
    # teacher + 1 TWIST epoch + 1 self-labeling epoch in one go, vs resuming from mme_ckpt.pth (end of epoch 0)
    train = load_script("train.py", "twist_train_script_resume")
    args = SHORT + ["--epochs", "2", "--mme_epochs", "1", "--use_momentum_encoder", "1", "--num_samples", "8"]
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    train.main(args + ["--output_dir", a])
    train.main(args + ["--output_dir", b, "--resume", os.path.join(a, "mme_ckpt.pth")])
    ca = torch.load(os.path.join(a, "checkpoint.pth"), weights_only=False)
    cb = torch.load(os.path.join(b, "checkpoint.pth"), weights_only=False)
    assert ca["epoch"] == cb["epoch"] == 1
    for key in ("model", "teacher"):
        for k, v in ca[key].items():
            torch.testing.assert_close(cb[key][k], v, rtol=0, atol=0, msg=lambda m: f"{key}.{k}: {m}")


def test_resume_from_a_checkpoint_of_the_original_code(tmp_path):
    # the original's format: early multi-head names, no engine entry, its own optimizer-group keys, 'epoch' =
    # last finished epoch; its train.py renamed the head keys and continued at epoch + 1
    train = load_script("train.py", "twist_train_script_oldkeys")
    args = SHORT + ["--num_samples", "8", "--max_steps_per_epoch", "1", "--use_momentum_encoder", "1",
                    "--lr_wbr", "2"]
    a = str(tmp_path / "a")
    train.main(args + ["--output_dir", a, "--epochs", "1"])
    ck = torch.load(os.path.join(a, "checkpoint.pth"), weights_only=False)
    new_to_old = {v: k for k, v in train.OLD_HEAD_KEYS.items()}
    for e in ("model", "teacher"):
        ck[e] = {new_to_old.get(k, k): v for k, v in ck[e].items()}
    assert "projection_heads.cls_heads.0.0.weight" in ck["model"]
    del ck["engine"]
    for g in ck["optimizer"]["param_groups"]:  # LARS_OPENSELF groups: no eps / clip / lr_scale / name
        for k in ("eps", "clip", "exclude_1d", "name", "lr_scale"):
            g.pop(k, None)
        g.update(dampening=0, nesterov=False)
    old = str(tmp_path / "old.pth")
    torch.save(ck, old)
    b = str(tmp_path / "b")
    train.main(args + ["--output_dir", b, "--epochs", "2", "--resume", old])
    out = torch.load(os.path.join(b, "checkpoint.pth"), weights_only=False)
    assert out["epoch"] == 1 and "projection_heads.last_linear.weight" in out["teacher"]
    assert len(out["engine"]["history"]) == 1  # only epoch 1 ran (epoch 0 of the checkpoint is not repeated)
    assert out["optimizer"]["param_groups"][1]["lr_scale"] == 0.5  # 1 / --lr_wbr restored for the bias group
