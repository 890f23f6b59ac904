"""mmdet 2.x parity of tools/det: the train-set filter (CocoDataset._filter_imgs / _parse_ann_info) and the
initialisation of the box head and FPN (BBoxHead / Shared2FCBBoxHead / FPN init_cfg)."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from tools.det.data import CocoInstances
from tools.det.model import build_mask_rcnn


def _ann(i, image_id, bbox, cat=1, **kw):
    x, y, w, h = bbox
    a = {"id": i, "image_id": image_id, "category_id": cat, "iscrowd": 0, "bbox": bbox, "area": w * h,
         "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]}
    a.update(kw)
    return a


def _write(root):
    os.makedirs(os.path.join(root, "img"), exist_ok=True)
    sizes = {i: (60, 40) for i in range(1, 11)}
    sizes[7] = (20, 40)  # min(w, h) = 20 < min_size 32
    for i, (w, h) in sizes.items():
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(os.path.join(root, "img", f"{i}.png"))
    anns = [
        _ann(1, 1, [10, 10, 10, 10]),                       # ordinary box
        _ann(2, 2, [0, 0, 10, 10], iscrowd=1),              # crowd only: image kept, no ground truth
        # image 3: no annotation at all -> dropped
        _ann(3, 4, [5, 5, 0.5, 10]),                        # w < 1: annotation dropped, image kept
        _ann(4, 5, [70, 5, 10, 10]),                        # outside the image: dropped, image kept
        _ann(5, 6, [5, 5, 10, 10], area=0),                 # area <= 0: dropped, image kept
        _ann(6, 7, [1, 1, 10, 10]),                         # too small an image -> dropped
        _ann(7, 8, [50, 30, 20, 20]),                       # partly outside: kept, clipped to 60 x 40
        _ann(8, 9, [5, 5, 10, 10], ignore=True),            # ignore flag: dropped, image kept
        _ann(9, 10, [5, 5, 10, 10], cat=99),                # unknown category only -> image dropped
        _ann(10, 1, [30, 20, 10, 5], cat=2),                # second box of image 1
    ]
    data = {"images": [{"id": i, "file_name": f"{i}.png", "width": w, "height": h} for i, (w, h) in sizes.items()],
            "annotations": anns, "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    with open(os.path.join(root, "ann.json"), "w") as f:
        json.dump(data, f)
    return os.path.join(root, "img"), os.path.join(root, "ann.json")


def test_train_filter_as_mmdet2(tmp_path):
    img_dir, ann = _write(str(tmp_path))
    ds = CocoInstances(img_dir, ann, train=True, flip_prob=0.0)
    # kept: any annotation of a known category and min side >= 32 (crowd-only and degenerate-only included)
    assert ds.ids == [1, 2, 4, 5, 6, 8, 9]
    gt = {ds.ids[k]: ds[k][1] for k in range(len(ds))}
    assert gt[1]["boxes"].tolist() == [[10, 10, 20, 20], [30, 20, 40, 25]] and gt[1]["labels"].tolist() == [1, 2]
    for i in (2, 4, 5, 6, 9):
        assert gt[i]["boxes"].shape == (0, 4) and gt[i]["labels"].numel() == 0 and gt[i]["masks"].shape == (0, 40, 60)
    assert gt[8]["boxes"].tolist() == [[50, 30, 60, 40]]  # clipped to the image
    assert CocoInstances(img_dir, ann, train=True, filter_empty_gt=False).ids == [1, 2, 3, 4, 5, 6, 8, 9, 10]
    assert CocoInstances(img_dir, ann, train=True, min_size=0).ids == [1, 2, 4, 5, 6, 7, 8, 9]
    val = CocoInstances(img_dir, ann, train=False)
    assert val.ids == list(range(1, 11))  # test mode: no image filter


def test_empty_ground_truth_trains(tmp_path):
    """A crowd-only image (kept as in mmdet) gives finite losses with no ground-truth box."""
    img_dir, ann = _write(str(tmp_path))
    ds = CocoInstances(img_dir, ann, train=True, flip_prob=0.0)
    torch.manual_seed(0)
    m = build_mask_rcnn(dict(backbone="resnet_tiny", fpn_channels=16, box_fc_dim=32, mask_conv_dim=8, min_size=40,
                             max_size=64, anchor_sizes=(16, 32, 64, 128, 256)), ds.num_classes).train()
    image, target = ds[ds.ids.index(2)]
    loss, logs = m({"images": [image], "targets": [target]})
    assert torch.isfinite(loss) and logs["loss_box_reg"] == 0 and logs["loss_mask"] == 0


def test_box_head_and_fpn_init_as_mmdet():
    """BBoxHead: fc_cls N(0, 0.01), fc_reg N(0, 0.001); Shared2FCBBoxHead fcs and FPN convs Xavier-uniform
    (bound sqrt(6 / (fan_in + fan_out))); biases 0 (mmcv NormalInit / XavierInit defaults)."""
    torch.manual_seed(0)
    m = build_mask_rcnn(dict(backbone="resnet_tiny", fpn_channels=64, box_fc_dim=1024, mask_conv_dim=16,
                             anchor_sizes=(16, 32, 64, 128, 256)), 80)
    pred = m.roi_heads.box_predictor
    assert pred.cls_score.weight.shape == (81, 1024) and pred.bbox_pred.weight.shape == (324, 1024)
    # sample std of 82,944 / 331,776 normal draws: within 2% of the target
    assert pred.cls_score.weight.std().item() == pytest.approx(0.01, rel=0.02)
    assert pred.bbox_pred.weight.std().item() == pytest.approx(0.001, rel=0.02)
    assert abs(pred.cls_score.weight.mean().item()) < 2e-4
    for lin in (m.roi_heads.box_head.fc6, m.roi_heads.box_head.fc7):
        fan_out, fan_in = lin.weight.shape
        bound = (6.0 / (fan_in + fan_out)) ** 0.5
        w = lin.weight.abs()
        assert w.max().item() <= bound and w.max().item() > 0.999 * bound
        assert lin.weight.std().item() == pytest.approx(bound / 3 ** 0.5, rel=0.02)  # uniform(-b, b) std
    convs = [c for c in m.backbone.fpn.modules() if isinstance(c, torch.nn.Conv2d)]
    assert len(convs) == 8
    for c in convs:
        rf = c.weight[0, 0].numel()
        bound = (6.0 / (c.in_channels * rf + c.out_channels * rf)) ** 0.5
        assert c.weight.abs().max().item() <= bound and c.weight.abs().max().item() > 0.9 * bound
    for lin in (pred.cls_score, pred.bbox_pred, m.roi_heads.box_head.fc6, m.roi_heads.box_head.fc7, *convs):
        assert torch.count_nonzero(lin.bias) == 0
