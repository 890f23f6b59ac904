"""tools/train_det.py run set-up (issue #11) and its CUDA-only branches emulated on CPU (issue #13): setup_run
order (optimizer over the final parameters), the config's optimizer / schedule / norm in the real entry point,
output paths as one error line, atomic converter outputs, the NCCL barrier bound to the device, 0 host reads
of the repo's own code per step."""
import json
import os
import traceback

import pytest
import torch
import torch.nn as nn

from core import dist
from core.engine.syncs import count_host_syncs

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TINY = os.path.join(REPO, "papers", "selfsup_det", "configs", "synthetic_tiny.py")
SMALL = ["data.synthetic.num_train=4", "data.synthetic.num_val=2", "data.synthetic.image_size=64",
         "model.min_size=64", "model.max_size=96", "data.samples_per_gpu=2"]


def _main_capturing_train(monkeypatch, tmp_path, options, extra=()):
    """Run the real entry point in this process up to the engine, which is replaced by a recorder."""
    from tools import train_det

    seen = {}

    def fake_train(wrapped, optimizer, loader, ecfg, ctx, **hooks):
        seen.update(wrapped=wrapped, optimizer=optimizer, ecfg=ecfg, hooks=hooks)
        return []

    monkeypatch.setattr(train_det, "train", fake_train)
    monkeypatch.setattr(train_det, "evaluate", lambda *a, **k: {"bbox_mAP": 0.5})
    train_det.main([TINY, "--work-dir", str(tmp_path / "w"), "--epochs", "2", "--cfg-options", *SMALL, *options,
                    *extra])
    return seen


def test_setup_optimizer_schedule_and_norm_from_the_config(monkeypatch, tmp_path):
    """The issue's example: Adam + CosineAnnealing + GN now train with Adam, the cosine schedule and GN; the
    optimizer holds exactly the trainable parameters of the final model (by identity)."""
    seen = _main_capturing_train(monkeypatch, tmp_path, [
        "optimizer.type=Adam", "optimizer.momentum=None", "lr_config.policy=CosineAnnealing",
        "lr_config.min_lr_ratio=0.0", "lr_config.warmup=None", "model.norm=GN", "model.norm_groups=8",
        "optimizer_config.grad_clip={'max_norm': 35, 'norm_type': 2}"])
    model, opt = seen["wrapped"], seen["optimizer"]
    assert type(opt) is torch.optim.Adam and opt.defaults["weight_decay"] == 1e-4
    in_opt = [p for g in opt.param_groups for p in g["params"]]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(in_opt) == len(trainable) and {id(p) for p in in_opt} == {id(p) for p in trainable}
    assert any(isinstance(m, nn.GroupNorm) for m in model.modules())
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert seen["ecfg"].clip_grad == 35.0
    # 4 images / 2 per step = 2 iterations per epoch, 2 epochs; lr 0.02 for 4 images (synthetic_tiny), batch 2
    before = seen["hooks"]["before_step"]
    base = 0.02 * 2 / 4
    before(0, 4)
    assert opt.param_groups[0]["lr"] == pytest.approx(base)
    before(2, 4)  # epoch 1 of 2: cos(pi / 2)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5 * base)


def test_seed_schedule_default_is_sgd_step_syncbn_config(monkeypatch, tmp_path):
    seen = _main_capturing_train(monkeypatch, tmp_path, [])
    opt = seen["optimizer"]
    assert type(opt) is torch.optim.SGD and opt.defaults["momentum"] == 0.9 and seen["ecfg"].clip_grad == 0.0
    seen["hooks"]["before_step"](0, 4)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01 * 0.001)  # linear warm-up from 0.001x (20 iterations)


def test_metrics_record_one_entry_per_epoch(monkeypatch, tmp_path):
    """An epoch evaluated again (a resume that repeats it) replaces its entry; the file is written atomically."""
    seen = _main_capturing_train(monkeypatch, tmp_path, ["evaluation.interval=1"])
    end_epoch = seen["hooks"]["end_epoch"]
    end_epoch(0)
    end_epoch(0)
    end_epoch(1)
    with open(tmp_path / "w" / "metrics.json") as f:
        rec = json.load(f)
    assert [e["epoch"] for e in rec["evaluations"]] == [1, 2]
    assert not [n for n in os.listdir(tmp_path / "w") if ".tmp" in n]


def _one_error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_work_dir_under_a_regular_file_is_one_line(tmp_path, capsys):
    from tools import train_det

    (tmp_path / "afile").write_text("x")
    with pytest.raises(SystemExit) as e:
        train_det.main([TINY, "--work-dir", str(tmp_path / "afile" / "run")])
    assert e.value.code == 2 and str(tmp_path / "afile") in _one_error_line(capsys)


def _moco(path):
    from core.backbones import resnet_tiny

    sd = resnet_tiny(cifar_stem=False).state_dict()
    torch.save({"state_dict": {"module.encoder_q." + k: v for k, v in sd.items()}}, path)


def test_converter_output_paths_are_one_line(tmp_path, capsys, monkeypatch):
    from tools import checkpoint_convert as cc

    src = str(tmp_path / "moco.pth")
    _moco(src)
    (tmp_path / "afile").write_text("x")
    for dst in (tmp_path / "afile" / "out.pth", tmp_path):  # under a regular file; an existing folder
        with pytest.raises(SystemExit) as e:
            cc.main([src, str(dst), "--to", "mmdet"])
        assert e.value.code == 2 and "error: cannot use" in _one_error_line(capsys)

    def unwritable(path, *a, **k):  # what open() raises in a folder without write permission
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(cc, "open", unwritable, raising=False)
    for fmt, name in (("torchvision", "o.pth"), ("detectron2", "o.pkl")):
        with pytest.raises(SystemExit) as e:
            cc.main([src, str(tmp_path / "ro" / name), "--to", fmt])
        line = _one_error_line(capsys)
        assert e.value.code == 2 and "Permission denied" in line and str(tmp_path / "ro") in line


def test_converter_write_is_atomic(tmp_path, monkeypatch):
    from tools import checkpoint_convert as cc

    src, dst = str(tmp_path / "moco.pth"), str(tmp_path / "out.pth")
    _moco(src)
    cc.convert(src, dst, "mmdet")
    before = open(dst, "rb").read()
    real_save = torch.save

    def killed(obj, f, *a, **k):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        cc.convert(src, dst, "torchvision")
    monkeypatch.setattr(torch, "save", real_save)
    assert open(dst, "rb").read() == before and sorted(os.listdir(tmp_path)) == ["moco.pth", "out.pth"]
    mask = os.umask(0)
    os.umask(mask)
    assert os.stat(dst).st_mode & 0o777 == 0o666 & ~mask


def test_nccl_barrier_is_bound_to_the_process_gpu(monkeypatch):
    """#13.3: with --gpus 2 3, rank 1 runs on cuda:3; its barrier must name that device, not guess it."""
    from tools import train_det

    calls = []
    monkeypatch.setattr(dist, "is_dist", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_backend", lambda *a: "nccl")
    monkeypatch.setattr(torch.distributed, "barrier", lambda *a, **k: calls.append(k))
    train_det._barrier(dist.DistContext(rank=1, local_rank=1, world_size=2, device=torch.device("cuda", 3)))
    train_det._barrier(dist.DistContext(rank=1, local_rank=1, world_size=2, device=torch.device("cpu")))
    assert calls == [{"device_ids": [3]}, {}]


class _OwnSyncs(count_host_syncs):
    """Host reads whose innermost non-torch frame is this repo's code (torchvision's own are counted apart)."""

    def __init__(self):
        super().__init__()
        self.own = []

    def _hit(self, name):
        super()._hit(name)
        frames = [f for f in traceback.extract_stack()
                  if "/torch/" not in f.filename and not f.filename.endswith("syncs.py") and f.name != "_hit"]
        if frames and "site-packages" not in frames[-1].filename:
            self.own.append(f"{name} at {frames[-1].filename}:{frames[-1].lineno}")


def test_repo_code_adds_no_host_sync_per_step(tmp_path):
    from tools.det.data import CocoInstances, collate
    from tools.det.model import build_mask_rcnn
    from tools.det.synthetic_coco import write_synthetic_coco

    p = write_synthetic_coco(str(tmp_path / "s"), 2, 1, 64)
    ds = CocoInstances(p["train_img"], p["train_ann"])
    torch.manual_seed(0)
    m = build_mask_rcnn(dict(backbone="resnet_tiny", fpn_channels=16, box_fc_dim=32, mask_conv_dim=8, min_size=64,
                             max_size=96, anchor_sizes=(16, 32, 64, 128, 256)), ds.num_classes).train()
    batch = collate([ds[0], ds[1]])
    with _OwnSyncs() as c:
        loss, logs = m(batch)
        loss.backward()
    assert c.own == []
    assert c.count > 0  # torchvision's detector reads values (proposal filtering, pooler scales): not ours
