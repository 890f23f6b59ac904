"""The commands of papers/align_uniform in shared/seed_commands.md, each as one short CPU job on built-in data.

Printed flags are kept verbatim; only shortening flags are appended (-a resnet_tiny, --image-size 32,
--num-samples, --epochs, --moco-k, -j 0, a free --dist-url port, --results-dir in a tmp folder)."""
import json
import os
import subprocess
import sys

import pytest
import torch

from au_helpers import load_script
from core.data import write_imagefolder
from core.dist import free_port

PY = sys.executable
SHORT = ["-a", "resnet_tiny", "--image-size", "32", "-j", "0"]


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")


def _run(paper_dir, args, timeout=300):
    return subprocess.run([PY] + args, cwd=paper_dir, env=_env(), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def moco_ckpt(tmp_path_factory):
    """The printed 4-GPU command: 4 gloo processes on CPU, one step of batch 128 (32 per process)."""
    paper = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "papers", "align_uniform"))
    res = tmp_path_factory.mktemp("au_res")
    printed = ["main_moco.py", "-a", "resnet50", "--lr", "0.03", "--batch-size", "128", "--gpus", "0", "1", "2",
               "3", "--multiprocessing-distributed", "--world-size", "1", "--rank", "0", "synthetic"]
    extra = SHORT + ["--moco-k", "256", "--num-samples", "128", "--epochs", "1",
                     "--dist-url", f"tcp://127.0.0.1:{free_port()}", "--results-dir", str(res)]
    p = _run(paper, printed + extra)
    assert p.returncode == 0, p.stderr[-3000:]
    run = res / "mocom0.999_align3alpha2_unif1t3_b128_lr0.03_e120,160,1"
    return p, run


def test_seed_moco_four_gloo_processes(moco_ckpt):
    p, run = moco_ckpt
    assert "=> Optimize:\n\t3 * loss_align(alpha=2)\n\t + 1 * loss_uniform(t=3)" in p.stdout
    ck = torch.load(run / "checkpoint_0000.pth.tar", map_location="cpu", weights_only=False)
    assert ck["epoch"] == 1 and ck["arch"] == "resnet_tiny" and "optimizer" in ck
    sd = ck["state_dict"]
    assert all(k.startswith("module.") for k in sd)
    assert sd["module.queue"].shape == (128, 256) and int(sd["module.queue_ptr"]) == 128  # 4 x 32 keys
    assert "module.scalar_label" not in sd  # contrastive term off by default
    assert any(k.startswith("module.encoder_q.fc") for k in sd) and any(k.startswith("module.encoder_k.") for k in sd)
    log = [json.loads(line) for line in open(run / "log.txt")]
    assert set(log[0]) >= {"train_loss_align", "train_loss_unif", "diag_align", "diag_uniform", "diag_eff_rank"}


@pytest.mark.parametrize("flags, folder", [
    (["--moco-align-w", "3", "--moco-align-alpha", "2", "--moco-unif-w", "1", "--moco-unif-t", "3",
      "--moco-contr-w", "0", "--moco-contr-tau", "0.07"], "mocom0.999_align3alpha2_unif1t3_b16_lr0.03_e120,160,2"),
    (["--moco-unif-no-intra-batch"], "mocom0.999_align3alpha2_unif1t3(no-intra-batch)_b16_lr0.03_e120,160,2"),
    (["--aug-plus", "--mlp", "--cos"], "mocom0.999_align3alpha2_unif1t3_mlp_aug+_cos_b16_lr0.03_e120,160,2"),
])
def test_seed_moco_variants(tmp_path, flags, folder):
    main_moco = load_script("main_moco")

    main_moco.main(["synthetic"] + flags + SHORT + ["--batch-size", "16", "--moco-k", "32", "--num-samples", "32",
                                                  "--epochs", "2", "--max-steps", "1", "--results-dir",
                                                  str(tmp_path)])
    log = [json.loads(line) for line in open(tmp_path / folder / "log.txt")]
    lrs = [e["lr"] for e in log]
    # per-epoch lr: cosine 0.03 * 0.5 * (1 + cos(pi * e / 2)) -> 0.03, 0.015; step schedule stays 0.03
    assert lrs == pytest.approx([0.03, 0.015] if "--cos" in flags else [0.03, 0.03])
    ck = torch.load(tmp_path / folder / "checkpoint_0001.pth.tar", map_location="cpu", weights_only=False)
    assert ck["epoch"] == 2
    if "--mlp" in flags:
        assert ck["state_dict"]["module.encoder_q.fc.0.weight"].shape == (128, 128)


def test_contrastive_only_and_resume(tmp_path):
    main_moco = load_script("main_moco")

    base = ["synthetic", "--moco-contr-w", "1", "--moco-align-w", "0", "--moco-unif-w", "0"] + SHORT + [
        "--batch-size", "16", "--moco-k", "32", "--num-samples", "32", "--max-steps", "1", "--results-dir",
        str(tmp_path)]
    main_moco.main(base + ["--epochs", "1"])
    run = tmp_path / "mocom0.999_contr1tau0.07_b16_lr0.03_e120,160,1"
    log = json.loads(open(run / "log.txt").readline())
    assert "train_loss_contr" in log and "train_contr_acc1" in log and "train_loss_align" not in log
    sd = torch.load(run / "checkpoint_0000.pth.tar", weights_only=False)["state_dict"]
    assert int(sd["module.scalar_label"]) == 0
    main_moco.main(base + ["--epochs", "2", "--resume", str(run / "checkpoint_0000.pth.tar")])
    ck = torch.load(tmp_path / "mocom0.999_contr1tau0.07_b16_lr0.03_e120,160,2" / "checkpoint_0001.pth.tar",
                    weights_only=False)
    assert ck["epoch"] == 2 and int(ck["state_dict"]["module.queue_ptr"]) == 32 % 32


def test_seed_lincls(moco_ckpt, tmp_path, capsys):
    main_lincls = load_script("main_lincls")

    _, run = moco_ckpt
    data = write_imagefolder(str(tmp_path / "imgs"), num_train=24, num_val=12, image_size=32, num_classes=6)
    ckpt = str(run / "checkpoint_0000.pth.tar")
    main_lincls.main(["-a", "resnet50", "--lr", "30.0", "--batch-size", "256", "--pretrained", ckpt,
                      "--multiprocessing-distributed", "--world-size", "1", "--rank", "0", data]
                     + SHORT + ["--epochs", "2", "--batch-size", "8"])
    out = run / "lincls" / "checkpoint_0000.pth.tar" / "b8_lr30_e60,80,2"
    assert (out / "model_best.pth.tar").is_file()
    assert (out / "checkpoint_0000.pth.tar").is_file()
    ck = torch.load(out / "checkpoint_0001.pth.tar", weights_only=False)
    assert ck["epoch"] == 2 and ck["arch"] == "resnet_tiny"
    assert 0 <= ck["acc1"] <= ck["acc5"] <= 100 and ck["best_acc1"] >= ck["acc1"]
    sd = ck["state_dict"]
    assert sd["module.fc.weight"].shape == (6, 128)  # classes from the train folder, 128-d pooled features
    pre = torch.load(ckpt, weights_only=False)["state_dict"]
    for k, v in sd.items():  # frozen encoder_q weights kept, head (fc) is the only trained part
        if not k.startswith("module.fc."):
            assert torch.equal(v, pre["module.encoder_q." + k[len("module."):]]), k
    # --evaluate on the resumed linear checkpoint: validation only, of exactly the saved weights: it prints the
    # accuracies recorded for that epoch (12 val images: multiples of 100 / 12) and writes no checkpoint
    written = sorted(os.listdir(out))
    capsys.readouterr()
    main_lincls.main(["-a", "resnet_tiny", "-e", "--resume", str(out / "checkpoint_0001.pth.tar"), data]
                     + SHORT + ["--batch-size", "8"])
    printed = capsys.readouterr().out
    assert f" * Acc@1 {ck['acc1']:.3f} Acc@5 {ck['acc5']:.3f}" in printed, printed[-500:]
    assert abs(ck["acc1"] * 12 / 100 - round(ck["acc1"] * 12 / 100)) < 1e-6
    assert sorted(os.listdir(out)) == written and "Epoch" not in printed


def test_bad_inputs_one_line_errors(tmp_path, capsys):
    main_lincls = load_script("main_lincls")
    main_moco = load_script("main_moco")

    cases = [(main_moco, ["/nonexistent/data"]),
             (main_moco, ["synthetic", "--moco-k", "100"]),  # not a multiple of the batch 128
             (main_moco, ["synthetic", "--moco-contr-w", "0", "--moco-align-w", "0", "--moco-unif-w", "0"]),
             (main_lincls, ["synthetic", "--pretrained", str(tmp_path / "missing.pth.tar")])]
    for mod, argv in cases:
        with pytest.raises(SystemExit) as e:
            mod.main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err, err


@pytest.mark.slow
def test_seed_moco_literal_resnet50(paper_dir, tmp_path):
    """The printed command with its resnet50 (no -a override): about a minute on 2 CPU cores."""
    p = _run(paper_dir, ["main_moco.py", "-a", "resnet50", "--lr", "0.03", "--batch-size", "128", "--gpus", "0",
                         "1", "2", "3", "--multiprocessing-distributed", "--world-size", "1", "--rank", "0",
                         "synthetic", "--image-size", "32", "--num-samples", "128", "--epochs", "1", "-j", "0",
                         "--dist-url", f"tcp://127.0.0.1:{free_port()}", "--results-dir", str(tmp_path)])
    assert p.returncode == 0, p.stderr[-3000:]


def test_lincls_keeps_only_encoder_q_without_mlp_head():
    """main_lincls keeps ``module.encoder_q.*`` minus ``fc*`` (projection and the --mlp head fc.0 / fc.2)."""
    main_lincls = load_script("main_lincls")
    t = torch.zeros(1)
    sd = {k: t for k in ["module.encoder_q.conv1.weight", "module.encoder_q.bn1.running_mean",
                         "module.encoder_q.layer1.0.conv1.weight", "module.encoder_q.fc.0.weight",
                         "module.encoder_q.fc.0.bias", "module.encoder_q.fc.2.weight", "module.encoder_q.fc.2.bias",
                         "module.encoder_k.conv1.weight", "module.encoder_k.fc.0.weight", "module.queue",
                         "module.queue_ptr", "module.scalar_label"]}
    assert sorted(main_lincls.encoder_q_state(sd)) == ["bn1.running_mean", "conv1.weight", "layer1.0.conv1.weight"]
