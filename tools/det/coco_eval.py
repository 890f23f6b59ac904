"""COCO bbox + segm AP with pycocotools (as torchvision's reference ``coco_eval.py`` / mmdet ``CocoMetric``).

Detections become ``{image_id, category_id, bbox=[x, y, w, h], score}`` and, for masks thresholded at 0.5,
``segmentation`` = compressed RLE (Fortran-ordered uint8, ``counts`` as str). ``COCOeval`` runs with
``iouType`` passed explicitly ('bbox', 'segm'; its default is 'segm'); ``stats[0]`` is the reported AP.
Each rank evaluates a disjoint shard of the images; results are gathered on every rank.
"""
from __future__ import annotations

import contextlib
import io
from typing import Dict, List, Sequence

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.cocoeval import COCOeval

from core import dist

STAT_NAMES = ("mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l")


def to_coco_results(outputs: List[Dict], image_ids: List[int], label2cat: Dict[int, int],
                    mask_threshold: float = 0.5) -> Dict[str, List[Dict]]:
    """Mask R-CNN outputs (xyxy boxes, contiguous labels, soft masks [N,1,H,W]) -> COCO result lists."""
    bbox, segm = [], []
    for out, img_id in zip(outputs, image_ids):
        boxes = out["boxes"].detach().cpu().float()
        if boxes.numel() == 0:
            continue
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
        scores = out["scores"].detach().cpu().tolist()
        labels = out["labels"].detach().cpu().tolist()
        for b, s, l in zip(xywh, scores, labels):
            bbox.append({"image_id": int(img_id), "category_id": int(label2cat[int(l)]), "bbox": b,
                         "score": float(s)})
        if "masks" in out:
            masks = (out["masks"].detach().cpu() > mask_threshold).numpy().astype(np.uint8)
            for m, s, l in zip(masks, scores, labels):
                rle = mask_utils.encode(np.asfortranarray(m[0]))
                rle["counts"] = rle["counts"].decode("utf-8")
                segm.append({"image_id": int(img_id), "category_id": int(label2cat[int(l)]),
                             "segmentation": rle, "score": float(s)})
    return {"bbox": bbox, "segm": segm}


def summarize(coco_gt, results: Dict[str, List[Dict]], image_ids: List[int], verbose: bool = True,
              iou_types: Sequence[str] = ("bbox", "segm")) -> Dict[str, float]:
    """Run COCOeval per iou type (the config's ``evaluation.metric``); returns ``{'bbox_mAP': ...,
    'segm_mAP_50': ...}`` (0 for no detections)."""
    metrics = {}
    for iou_type in iou_types:
        dets = results.get(iou_type, [])
        if not dets:
            metrics.update({f"{iou_type}_{n}": 0.0 for n in STAT_NAMES})
            continue
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            coco_dt = coco_gt.loadRes(dets)
            ev = COCOeval(coco_gt, coco_dt, iouType=iou_type)
            ev.params.imgIds = sorted(set(image_ids))
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        if verbose:
            lines = [ln for ln in buf.getvalue().splitlines() if ln.lstrip().startswith("Average")]
            print(f"IoU metric: {iou_type}\n" + "\n".join(lines))
        stats = [max(float(v), 0.0) for v in ev.stats[:6]]  # -1 (no gt in a size range) -> 0
        metrics.update({f"{iou_type}_{n}": v for n, v in zip(STAT_NAMES, stats)})
    return metrics


@torch.no_grad()
def evaluate(model, loader, coco_gt, label2cat: Dict[int, int], device, verbose: bool = True,
             iou_types: Sequence[str] = ("bbox", "segm")) -> Dict[str, float]:
    """Inference over ``loader`` (this rank's shard), gather every rank's results, COCO AP."""
    was_training = model.training
    model.eval()
    results = {"bbox": [], "segm": []}
    ids: List[int] = []
    for batch in loader:
        images = [im.to(device) for im in batch["images"]]
        outputs = model(images)
        img_ids = [int(t["image_id"]) for t in batch["targets"]]
        ids += img_ids
        for k, v in to_coco_results(outputs, img_ids, label2cat).items():
            results[k] += v
    if dist.is_dist() and dist.get_world_size() > 1:
        gathered = [None] * dist.get_world_size()
        torch.distributed.all_gather_object(gathered, (results, ids))
        results = {k: [r for g in gathered for r in g[0][k]] for k in results}
        ids = [i for g in gathered for i in g[1]]
    model.train(was_training)
    return summarize(coco_gt, results, ids, verbose=verbose and dist.is_main_process(), iou_types=iou_types)
