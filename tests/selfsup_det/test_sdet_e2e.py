"""Convert -> fine-tune -> evaluate on the built-in synthetic COCO set, on CPU, through the real scripts."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TINY = "papers/selfsup_det/configs/synthetic_tiny.py"
SMALL = ["--cfg-options", "data.synthetic.num_train=6", "data.synthetic.num_val=3", "data.synthetic.image_size=64",
         "model.min_size=64", "model.max_size=96", "data.samples_per_gpu=2"]


def _run(args, cwd=REPO):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-u"] + args, cwd=cwd, capture_output=True, text=True, env=env)
    return r


def _fake_moco_tiny(path):
    """A MoCo-layout checkpoint (module.encoder_q/encoder_k, MLP head, queue) of the tiny detection trunk."""
    from core.backbones import resnet_tiny

    torch.manual_seed(1)
    q, k = resnet_tiny(cifar_stem=False).state_dict(), resnet_tiny(cifar_stem=False).state_dict()
    sd = {**{"module.encoder_q." + n: v for n, v in q.items() if not n.startswith("fc")},
          **{"module.encoder_k." + n: v for n, v in k.items() if not n.startswith("fc")},
          "module.encoder_q.fc.0.weight": torch.randn(128, 128), "module.encoder_q.fc.2.weight": torch.randn(16, 128),
          "module.queue": torch.randn(16, 32), "module.queue_ptr": torch.zeros(1, dtype=torch.long)}
    torch.save({"epoch": 1, "arch": "resnet_tiny", "state_dict": sd, "optimizer": {}}, path)
    return {n: v for n, v in q.items() if not n.startswith("fc")}


def test_convert_finetune_evaluate_resume(tmp_path):
    src, conv, work = tmp_path / "moco.pth.tar", tmp_path / "moco_tiny_mmdet.pth", tmp_path / "work"
    q = _fake_moco_tiny(src)
    r = _run(["tools/model_converters/selfsup2mmdet.py", str(src), str(conv), "--selfsup", "moco"])
    assert r.returncode == 0, r.stderr
    base = ["tools/train_det.py", TINY, "--pretrained", str(conv), "--work-dir", str(work), "--threads", "1",
            "--max-iters-per-epoch", "2"] + SMALL
    r = _run(base[:2] + ["--epochs", "1"] + base[2:])
    assert r.returncode == 0, r.stderr[-2000:]
    assert "loaded" in r.stdout and "(mmdet" not in r.stdout
    logs = [json.loads(line) for line in open(work / "log.txt")]
    assert len(logs) == 1
    for key in ("train_loss", "train_loss_classifier", "train_loss_box_reg", "train_loss_mask",
                "train_loss_objectness", "train_loss_rpn_box_reg"):
        assert math.isfinite(logs[0][key]), key
    for key in ("bbox_mAP", "segm_mAP", "bbox_mAP_50", "segm_mAP_75"):
        assert 0.0 <= logs[0][key] <= 1.0
    # the lr of the last step: synthetic_tiny's 0.02 is for base_batch_size 4 -> 0.02 * 2 / 4 = 0.01 for one
    # process x 2 images, times mmdet's linear warm-up factor 0.001 + 0.999 * it / 20 at iteration it = 1
    assert logs[0]["lr"] == pytest.approx(0.01 * (0.001 + 0.999 * 1 / 20), rel=1e-9)
    metrics = json.load(open(work / "metrics.json"))
    assert metrics["evaluations"][0]["epoch"] == 1 and "segm_mAP" in metrics["evaluations"][0]
    # evaluating the saved checkpoint again (--eval-only) reproduces the epoch's COCO metrics
    r = _run(["tools/train_det.py", TINY, "--eval-only", "--checkpoint", str(work / "latest.pth"), "--work-dir",
              str(tmp_path / "reeval"), "--threads", "1"] + SMALL)
    assert r.returncode == 0, r.stderr[-2000:]
    again = json.load(open(tmp_path / "reeval" / "metrics.json"))["evaluations"][-1]
    for key in ("bbox_mAP", "segm_mAP", "bbox_mAP_50", "segm_mAP_75"):
        assert again[key] == pytest.approx(logs[0][key], abs=1e-6), key
    ck = torch.load(work / "latest.pth", weights_only=False)
    body = {k[len("backbone.body."):]: v for k, v in ck["model"].items() if k.startswith("backbone.body.")}
    # the converted weights were loaded; frozen_stages=0 keeps the stem (conv1 + bn1 statistics) unchanged
    assert torch.equal(body["conv1.weight"], q["conv1.weight"])
    assert torch.equal(body["bn1.running_mean"], q["bn1.running_mean"])
    assert not torch.equal(body["layer1.0.conv1.weight"], q["layer1.0.conv1.weight"])
    assert not torch.equal(body["layer1.0.bn1.running_mean"], q["layer1.0.bn1.running_mean"])  # BN trains
    # resume from latest.pth and run a second epoch
    r = _run(base[:2] + ["--epochs", "2", "--resume", "auto", "--no-eval"] + base[2:])
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resumed from" in r.stdout and "at epoch 1" in r.stdout
    logs = [json.loads(line) for line in open(work / "log.txt")]
    assert [l["epoch"] for l in logs] == [0, 1] and math.isfinite(logs[1]["train_loss"])
    assert logs[1]["lr"] == pytest.approx(0.01 * (0.001 + 0.999 * 3 / 20), rel=1e-9)  # resumed at iteration 2
    # the saved detector converts back to a backbone (this repo's own layout)
    from tools.checkpoint_convert import extract_backbone

    layout, bb = extract_backbone(str(work / "latest.pth"))
    assert layout == "repo" and torch.equal(bb["conv1.weight"], q["conv1.weight"])


def test_bad_inputs_one_line(tmp_path):
    r = _run(["tools/train_det.py", TINY, "--pretrained", str(tmp_path / "nope.pth"), "--work-dir",
              str(tmp_path / "w")] + SMALL)
    assert r.returncode == 2 and "does not exist" in r.stderr and r.stderr.strip().count("\n") == 0
    r = _run(["tools/train_det.py", "papers/selfsup_det/configs/mask_rcnn_r50_fpn_swav-pretrain_1x_coco.py",
              "--work-dir", str(tmp_path / "w"), "--data-root", str(tmp_path / "no_coco")])
    assert r.returncode == 2 and "data root" in r.stderr
    torch.save({"hello": {"x": torch.zeros(1)}}, tmp_path / "weird.pth")
    r = _run(["tools/checkpoint_convert.py", str(tmp_path / "weird.pth"), str(tmp_path / "o.pth")])
    assert r.returncode == 2 and "top-level keys: hello" in r.stderr


@pytest.mark.slow
def test_finetune_beats_init(tmp_path):
    """AP after a short fine-tune on the synthetic set is clearly above AP at initialisation."""
    src, conv, work = tmp_path / "moco.pth.tar", tmp_path / "conv.pth", tmp_path / "work"
    _fake_moco_tiny(src)
    assert _run(["tools/model_converters/selfsup2mmdet.py", str(src), str(conv), "--selfsup", "moco"]).returncode == 0
    common = ["--pretrained", str(conv), "--threads", "2"]
    r = _run(["tools/train_det.py", TINY, "--eval-only", "--work-dir", str(tmp_path / "init")] + common)
    assert r.returncode == 0, r.stderr[-2000:]
    init = json.load(open(tmp_path / "init" / "metrics.json"))["evaluations"][-1]
    r = _run(["tools/train_det.py", TINY, "--work-dir", str(work), "--epochs", "6", "--cfg-options",
              "lr_config.step=[4,5]", "evaluation.interval=6"] + common)
    assert r.returncode == 0, r.stderr[-2000:]
    final = json.load(open(work / "metrics.json"))["evaluations"][-1]
    assert final["bbox_mAP"] > init["bbox_mAP"] + 0.1, (init, final)
    assert final["segm_mAP"] > init["segm_mAP"] + 0.1, (init, final)


@pytest.mark.slow
def test_seed_configs_train_from_seed_conversion(tmp_path):
    """The seed flow with ResNet-50: the printed MoCo converter command writes ./mocov2_r50_800ep_pretrain.pth,
    and each of the four seed configs trains one step from its own default `pretrained` path (the converted
    MoCo file, or the raw SwAV file as mmdet's SwAV configs do) and evaluates, on the synthetic set."""
    import torchvision

    os.symlink(os.path.join(REPO, "tools"), tmp_path / "tools")
    torch.manual_seed(0)
    sd = {k: v for k, v in torchvision.models.resnet50(weights=None).state_dict().items() if not k.startswith("fc.")}
    torch.save({"epoch": 800, "arch": "resnet50", "optimizer": {},
                "state_dict": {**{"module.encoder_q." + k: v for k, v in sd.items()},
                               "module.encoder_q.fc.0.weight": torch.randn(16, 2048),
                               "module.queue": torch.randn(16, 8), "module.queue_ptr": torch.zeros(1)}},
               tmp_path / "moco_v2_800ep_pretrain.pth.tar")
    torch.save({**{"module." + k: v for k, v in sd.items()}, "module.prototypes.weight": torch.randn(30, 128)},
               tmp_path / "swav_800ep_pretrain.pth.tar")
    r = _run("tools/model_converters/selfsup2mmdet.py ./moco_v2_800ep_pretrain.pth.tar "
             "mocov2_r50_800ep_pretrain.pth --selfsup moco".split(), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    short = ["--data-root", "synthetic", "--threads", "2", "--epochs", "1", "--max-iters-per-epoch", "1",
             "--cfg-options", "model.min_size=80", "model.max_size=120", "model.min_size_train_range=(64,80)",
             "data.workers_per_gpu=0", "data.synthetic.num_train=2", "data.synthetic.num_val=2",
             "data.synthetic.image_size=64"]
    for name, layout in (("mocov2-pretrain_1x", "plain"), ("mocov2-pretrain_ms-2x", "plain"),
                         ("swav-pretrain_1x", "swav"), ("swav-pretrain_ms-2x", "swav")):
        config = os.path.join(REPO, "papers", "selfsup_det", "configs", f"mask_rcnn_r50_fpn_{name}_coco.py")
        r = _run(["tools/train_det.py", config, "--work-dir", str(tmp_path / name)] + short, cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-2000:]
        assert "=> loaded 318 backbone tensors from './" in r.stdout and f"({layout} layout)" in r.stdout
        log = json.loads(open(tmp_path / name / "log.txt").read().splitlines()[-1])
        assert math.isfinite(log["train_loss"]) and 0.0 <= log["segm_mAP"] <= 1.0


@pytest.mark.slow
def test_two_process_syncbn_finetune(tmp_path):
    """--multiprocessing-distributed with 2 CPU processes (gloo): the backbone BNs synchronise (SyncBN config),
    training and the sharded COCO evaluation finish with finite losses."""
    src, work = tmp_path / "moco.pth.tar", tmp_path / "work"
    q = _fake_moco_tiny(src)
    r = _run(["tools/train_det.py", TINY, "--pretrained", str(src), "--work-dir", str(work), "--threads", "1",
              "--epochs", "1", "--max-iters-per-epoch", "2", "--multiprocessing-distributed", "--gpus", "0", "1"]
             + SMALL)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "2 process(es) x 2 images" in r.stdout
    log = json.loads(open(work / "log.txt").read().splitlines()[-1])
    assert math.isfinite(log["train_loss"]) and 0.0 <= log["bbox_mAP"] <= 1.0
    ck = torch.load(work / "latest.pth", weights_only=False)
    assert torch.equal(ck["model"]["backbone.body.conv1.weight"], q["conv1.weight"])  # stem frozen
