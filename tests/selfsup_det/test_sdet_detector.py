"""Detector, configs, schedule, SyncBN, COCO data and evaluation of tools/det (spec §2, §4)."""
import json
import os
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision
from pycocotools import mask as mask_utils

from core.errors import UserError
from tools.checkpoint_convert import extract_backbone, to_detector_keys
from tools.det.coco_eval import summarize, to_coco_results
from tools.det.config import load_config, scaled_lr, step_lr_with_warmup
from tools.det.data import CocoInstances, collate
from tools.det.model import build_mask_rcnn, load_pretrained
from tools.det.synthetic_coco import write_synthetic_coco
from tools.train_det import model_cfg

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CFG = os.path.join(REPO, "papers", "selfsup_det", "configs")
SEED_TABLE = {  # seed 004 results table: box AP / mask AP
    "mask_rcnn_r50_fpn_mocov2-pretrain_1x_coco.py": (38.0, 34.3, 12, [8, 11], None),
    "mask_rcnn_r50_fpn_mocov2-pretrain_ms-2x_coco.py": (40.8, 36.8, 24, [16, 22], (640, 800)),
    "mask_rcnn_r50_fpn_swav-pretrain_1x_coco.py": (39.1, 35.7, 12, [8, 11], None),
    "mask_rcnn_r50_fpn_swav-pretrain_ms-2x_coco.py": (41.3, 37.3, 24, [16, 22], (640, 800)),
}


@pytest.mark.parametrize("name", sorted(SEED_TABLE))
def test_seed_configs(name):
    box, mask, epochs, steps, ms = SEED_TABLE[name]
    cfg = load_config(os.path.join(CFG, name))
    assert cfg["reference"]["box_ap"] == box and cfg["reference"]["mask_ap"] == mask
    m = cfg["model"]
    assert (m["backbone"], m["frozen_stages"], m["norm"], m["norm_eval"]) == ("resnet50", 0, "SyncBN", False)
    assert (m["min_size"], m["max_size"], m["fpn_channels"], m["box_fc_dim"]) == (800, 1333, 256, 1024)
    assert m.get("min_size_train_range") == ms
    o = cfg["optimizer"]
    assert (o["lr"], o["momentum"], o["weight_decay"], o["base_batch_size"]) == (0.02, 0.9, 1e-4, 16)
    s = cfg["lr_config"]
    assert (s["warmup_iters"], s["warmup_ratio"], s["step"], s["gamma"]) == (500, 0.001, steps, 0.1)
    assert cfg["runner"]["max_epochs"] == epochs
    assert cfg["data"]["samples_per_gpu"] == 2 and cfg["data"]["flip_prob"] == 0.5
    assert cfg["pretrained"] == ("./mocov2_r50_800ep_pretrain.pth" if "moco" in name else "./swav_800ep_pretrain.pth.tar")
    if ms:
        assert model_cfg(cfg)["min_size"] == tuple(range(640, 801))


def test_lr_schedule_hand_values():
    base = scaled_lr(0.02, 16)
    assert base == 0.02 and scaled_lr(0.02, 2) == pytest.approx(0.0025) and scaled_lr(0.02, 2, enable=False) == 0.02
    f = lambda it, ep: step_lr_with_warmup(it, ep, 0.02, [8, 11])  # noqa: E731
    assert f(0, 0) == pytest.approx(0.02 * 0.001)
    assert f(250, 0) == pytest.approx(0.02 * (0.001 + 0.999 * 0.5))  # 0.01001
    assert f(499, 0) == pytest.approx(0.02 * (0.001 + 0.999 * 499 / 500))
    assert f(500, 0) == pytest.approx(0.02)
    assert f(10_000, 7) == pytest.approx(0.02) and f(10_000, 8) == pytest.approx(0.002)
    assert f(10_000, 10) == pytest.approx(0.002) and f(10_000, 11) == pytest.approx(0.0002)
    assert step_lr_with_warmup(100, 0, 0.02, [16, 22]) == pytest.approx(0.02 * (0.001 + 0.999 * 0.2))
    assert step_lr_with_warmup(9999, 22, 0.02, [16, 22]) == pytest.approx(0.0002)


def _tiny(classes=3, **kw):
    cfg = dict(backbone="resnet_tiny", fpn_channels=32, box_fc_dim=64, mask_conv_dim=16, min_size=64, max_size=96,
               anchor_sizes=(16, 32, 64, 128, 256))
    cfg.update(kw)
    return build_mask_rcnn(cfg, classes)


def test_frozen_stages_and_norm_eval():
    m = _tiny(frozen_stages=0, norm_eval=False).train()
    body = m.backbone.body
    frozen = {n for n, p in body.named_parameters() if not p.requires_grad}
    assert frozen == {"conv1.weight", "bn1.weight", "bn1.bias"}  # mmdet: frozen_stages=0 still freezes the stem
    assert not body.bn1.training and body.layer1[0].bn1.training and body.layer4[0].bn2.training
    m = _tiny(frozen_stages=-1).train()
    assert all(p.requires_grad for p in m.backbone.body.parameters()) and m.backbone.body.bn1.training
    m = _tiny(frozen_stages=2).train()
    assert not any(p.requires_grad for p in m.backbone.body.layer2.parameters())
    assert all(p.requires_grad for p in m.backbone.body.layer3.parameters())
    assert not m.backbone.body.layer2[0].bn1.training and m.backbone.body.layer3[0].bn1.training
    m = _tiny(norm_eval=True).train()
    bns = [x for x in m.backbone.body.modules() if isinstance(x, nn.BatchNorm2d)]
    assert bns and not any(b.training for b in bns)
    assert m.rpn.training and m.roi_heads.training


def test_converted_r50_loads_into_torchvision_maskrcnn(tmp_path):
    r50 = torchvision.models.resnet50(weights=None)
    sd = OrderedDict((k, torch.randn_like(v) if v.is_floating_point() else v) for k, v in r50.state_dict().items())
    ck = {"state_dict": {"module.encoder_q." + k: v for k, v in sd.items()}, "epoch": 800}
    layout, bb = extract_backbone(ck, method="moco")
    # torchvision's own constructor (no weights, no download): no backbone.body key may be missing
    tv = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    res = tv.load_state_dict(to_detector_keys(bb), strict=False)
    assert [k for k in res.missing_keys if k.startswith("backbone.body.")] == [] and res.unexpected_keys == []
    assert len(tv.state_dict()) == 360
    # the seed config's model (ours) loads it through load_pretrained
    cfg = load_config(os.path.join(CFG, "mask_rcnn_r50_fpn_mocov2-pretrain_1x_coco.py"))
    model = build_mask_rcnn(model_cfg(cfg), 80)
    assert set(model.state_dict()) == set(tv.state_dict())
    layout, n = load_pretrained(model, ck, method="moco")
    assert layout == "moco" and n == 318
    body = model.backbone.body.state_dict()
    assert all(torch.equal(body[k], sd[k]) for k in body)
    # a tiny trunk does not fit the R50 detector: one-line error
    small = build_mask_rcnn(dict(backbone="resnet_tiny"), 3).backbone.body.state_dict()
    with pytest.raises(UserError, match="does not fit"):
        load_pretrained(model, {"state_dict": {"module.encoder_q." + k: v for k, v in small.items()}})


def test_multiscale_transform():
    m = _tiny(min_size=tuple(range(64, 81)), max_size=200)
    seen = set()
    torch.manual_seed(0)
    m.train()
    for _ in range(40):
        out, _ = m.transform([torch.rand(3, 50, 100)])
        seen.add(out.image_sizes[0][0])
    assert len(seen) > 5 and min(seen) >= 64 and max(seen) <= 80
    m.eval()
    out, _ = m.transform([torch.rand(3, 50, 100)])
    assert out.image_sizes[0][0] == 80  # test scale = last (largest) of the range


def _write_coco(root):
    """A hand-made COCO file: polygon, compressed RLE, uncompressed RLE, crowd and an empty image."""
    os.makedirs(os.path.join(root, "img"), exist_ok=True)
    for i in (1, 2, 3):
        from PIL import Image

        Image.fromarray(np.full((40, 60, 3), 10 * i, np.uint8)).save(os.path.join(root, "img", f"{i}.png"))
    m = np.zeros((40, 60), np.uint8)
    m[5:15, 30:50] = 1
    crle = mask_utils.encode(np.asfortranarray(m))
    crle["counts"] = crle["counts"].decode()
    m2 = np.zeros((40, 60), np.uint8)
    m2[20:30, 0:10] = 1
    flat = m2.flatten(order="F")
    counts, prev, run = [], 0, 0
    for v in flat:
        if v != prev:
            counts.append(run)
            run, prev = 0, v
        run += 1
    counts.append(run)
    anns = [
        {"id": 1, "image_id": 1, "category_id": 7, "iscrowd": 0, "bbox": [10, 10, 10, 10], "area": 100,
         "segmentation": [[10, 10, 20, 10, 20, 20, 10, 20]]},
        {"id": 2, "image_id": 1, "category_id": 3, "iscrowd": 0, "bbox": [30, 5, 20, 10], "area": 200,
         "segmentation": crle},
        {"id": 3, "image_id": 1, "category_id": 3, "iscrowd": 0, "bbox": [0, 20, 10, 10], "area": 100,
         "segmentation": {"size": [40, 60], "counts": counts}},
        {"id": 4, "image_id": 2, "category_id": 3, "iscrowd": 1, "bbox": [0, 0, 10, 10], "area": 100,
         "segmentation": {"size": [40, 60], "counts": counts}},
    ]
    data = {"images": [{"id": i, "file_name": f"{i}.png", "width": 60, "height": 40} for i in (1, 2, 3)],
            "annotations": anns, "categories": [{"id": 7, "name": "b"}, {"id": 3, "name": "a"}]}
    with open(os.path.join(root, "ann.json"), "w") as f:
        json.dump(data, f)
    return os.path.join(root, "img"), os.path.join(root, "ann.json"), (m, m2)


def test_coco_dataset(tmp_path):
    img_dir, ann, (m_rle, m_unc) = _write_coco(str(tmp_path))
    ds = CocoInstances(img_dir, ann, train=True, flip_prob=0.0)
    assert ds.ids == [1, 2]  # image 2 has only a crowd box (kept, as mmdet 2.x), image 3 nothing: filter_empty_gt
    assert ds.cat2label == {3: 1, 7: 2} and ds.label2cat == {1: 3, 2: 7}
    image, t = ds[0]
    assert image.shape == (3, 40, 60) and image.max() <= 1.0
    assert t["labels"].tolist() == [2, 1, 1]
    assert t["boxes"].tolist() == [[10, 10, 20, 20], [30, 5, 50, 15], [0, 20, 10, 30]]
    assert torch.equal(t["masks"][1], torch.from_numpy(m_rle)) and torch.equal(t["masks"][2], torch.from_numpy(m_unc))
    poly = t["masks"][0].numpy()
    ys, xs = np.nonzero(poly)
    assert 10 <= xs.min() and xs.max() <= 20 and 10 <= ys.min() and ys.max() <= 20
    val = CocoInstances(img_dir, ann, train=False)
    assert val.ids == [1, 2, 3]
    assert val[1][1]["boxes"].shape == (0, 4)  # crowd box ignored
    flip = CocoInstances(img_dir, ann, train=True, flip_prob=1.0)
    _, tf = flip[0]
    assert torch.equal(tf["masks"], t["masks"].flip(-1))
    ys, xs = np.nonzero(tf["masks"][1].numpy())
    assert tf["boxes"][1].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    b = collate([ds[0], val[2]])
    assert b["ids"].tolist() == [1, 3] and len(b["images"]) == 2
    with pytest.raises(UserError):
        CocoInstances(img_dir, str(tmp_path / "missing.json"))


def test_coco_eval_perfect_and_shifted(tmp_path):
    img_dir, ann, _ = _write_coco(str(tmp_path))
    ds = CocoInstances(img_dir, ann, train=False)
    _, t = ds[0]
    perfect = [{"boxes": t["boxes"], "scores": torch.ones(3), "labels": t["labels"],
                "masks": t["masks"][:, None].float()}]
    res = to_coco_results(perfect, [1], ds.label2cat)
    assert {r["category_id"] for r in res["bbox"]} == {3, 7}
    assert res["bbox"][1]["bbox"] == [30.0, 5.0, 20.0, 10.0]
    m = summarize(ds.coco, res, [1, 2, 3], verbose=False)
    assert m["bbox_mAP"] == pytest.approx(1.0) and m["segm_mAP"] == pytest.approx(1.0)
    shifted = [{**perfect[0], "boxes": t["boxes"] + torch.tensor([3.0, 0, 3.0, 0])}]
    m2 = summarize(ds.coco, to_coco_results(shifted, [1], ds.label2cat), [1, 2, 3], verbose=False)
    assert 0 < m2["bbox_mAP"] < 1 and m2["segm_mAP"] == pytest.approx(1.0)
    assert summarize(ds.coco, {"bbox": [], "segm": []}, [1], verbose=False)["bbox_mAP"] == 0.0


def test_synthetic_coco_deterministic(tmp_path):
    a = write_synthetic_coco(str(tmp_path / "a"), 6, 3, 64, seed=1)
    b = write_synthetic_coco(str(tmp_path / "b"), 6, 3, 64, seed=1)
    for key in ("train_ann", "val_ann"):
        with open(a[key]) as fa, open(b[key]) as fb:
            ja, jb = json.load(fa), json.load(fb)
        assert ja["annotations"] == jb["annotations"] and ja["images"] == jb["images"]
    for name in sorted(os.listdir(a["train_img"])):
        with open(os.path.join(a["train_img"], name), "rb") as fa, open(os.path.join(b["train_img"], name), "rb") as fb:
            assert fa.read() == fb.read()
    ds = CocoInstances(a["train_img"], a["train_ann"], train=False)
    kinds = set()
    for i in range(len(ds)):
        image, t = ds[i]
        for box, mk in zip(t["boxes"], t["masks"]):
            ys, xs = np.nonzero(mk.numpy())
            assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            # the shape is drawn where its mask is: brighter than the dark background
            assert image[:, mk.bool()].max(0).values.mean() > 0.3
    for ann_ in ds.coco.anns.values():
        kinds.add("rle" if isinstance(ann_["segmentation"], dict) else "poly")
    assert kinds == {"rle", "poly"}  # rings are RLE, the other shapes polygons
    assert ds.num_classes == 4
    c = write_synthetic_coco(str(tmp_path / "c"), 6, 3, 64, seed=2)
    with open(c["train_ann"]) as fc, open(a["train_ann"]) as fa:
        assert json.load(fc)["annotations"] != json.load(fa)["annotations"]


def test_train_step_on_cpu(tmp_path):
    torch.manual_seed(0)
    p = write_synthetic_coco(str(tmp_path / "s"), 4, 2, 64)
    ds = CocoInstances(p["train_img"], p["train_ann"])
    m = _tiny(classes=ds.num_classes, frozen_stages=0)
    m.train()
    stem = m.backbone.body.conv1.weight.clone()
    opt = torch.optim.SGD([q for q in m.parameters() if q.requires_grad], lr=0.01, momentum=0.9)
    batch = collate([ds[0], ds[1]])
    with torch.no_grad():  # the same step through torchvision's own MaskRCNN.forward (same RNG for the sampling)
        torch.manual_seed(1)
        from torchvision.models.detection import MaskRCNN

        raw = {k: v.item() for k, v in MaskRCNN.forward(m, batch["images"], batch["targets"]).items()}
    torch.manual_seed(1)
    loss, logs = m(batch)
    assert set(logs) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
    # logs are torchvision's five loss terms, and the engine loss is their unweighted sum (mmdet loss_weight 1)
    assert {k: v.item() for k, v in logs.items()} == pytest.approx(raw, rel=1e-5)
    assert torch.isfinite(loss) and loss.item() == pytest.approx(sum(raw.values()), rel=1e-5)
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert torch.equal(m.backbone.body.conv1.weight, stem)  # frozen stem
    assert m.backbone.body.layer1[0].conv1.weight.grad is not None


@pytest.mark.parametrize("bad", [["--epochs", "0"], ["--epochs", "-1"], ["--max-iters-per-epoch", "0"],
                                 ["--samples-per-gpu", "0"], ["--threads", "-2"]])
def test_train_det_rejects_non_positive_sizes(bad):
    from tools.train_det import parse_args

    with pytest.raises(UserError, match="must be"):
        parse_args([os.path.join(CFG, "synthetic_tiny.py")] + bad)
    a, _ = parse_args([os.path.join(CFG, "synthetic_tiny.py"), "--epochs", "1", "--samples-per-gpu", "2"])
    assert (a.epochs, a.samples_per_gpu) == (1, 2)
