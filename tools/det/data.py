"""COCO-format instance-segmentation data for torchvision Mask R-CNN.

``CocoInstances(img_dir, ann_file, train)`` reads an ``instances_*.json`` (polygon or RLE masks) with
pycocotools and yields ``(image, target)``: a float RGB tensor in [0, 1] (the detector normalises with the
ImageNet mean/std, = mmdet's ``mean=[123.675,116.28,103.53], std=[58.395,57.12,57.375]`` / 255) and
``{'boxes' (xyxy), 'labels' (1..K, contiguous over the sorted category ids as mmdet does), 'masks', 'image_id'}``.
Training follows mmdet 2.x ``CocoDataset`` with ``coco_instance.py``:

* image filter (``_filter_imgs``, ``filter_empty_gt=True``, ``min_size=32``): an image is kept when it has at
  least one annotation of a known category (any annotation: crowd-only images and images whose boxes are all
  degenerate are kept, and train with no ground truth) and ``min(width, height) >= min_size``;
* annotation filter (``_parse_ann_info``, train and val): an annotation is dropped when ``ignore`` is set, its
  box does not intersect the image, ``area <= 0``, ``w < 1`` or ``h < 1``, or its category is unknown; crowd
  boxes become mmdet's ``gt_bboxes_ignore``, which Mask R-CNN never reads (``ignore_iof_thr=-1``), so they are
  dropped too;
* kept boxes are clipped to the image (mmdet's ``Resize(bbox_clip_border=True)``), then ``RandomFlip(0.5)``.

Resizing (1333x800, or the multi-scale range) is done by the detector's transform.
"""
from __future__ import annotations

import os
from typing import Dict, List

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from core.errors import UserError


def _coco(ann_file: str):
    from contextlib import redirect_stdout
    from io import StringIO

    from pycocotools.coco import COCO

    if not os.path.isfile(ann_file):
        raise UserError(f"annotation file '{ann_file}' does not exist")
    try:
        with redirect_stdout(StringIO()):
            return COCO(ann_file)
    except Exception as e:
        raise UserError(f"annotation file '{ann_file}' is not a COCO instances json ({e})") from None


def ann_to_mask(segm, h: int, w: int) -> np.ndarray:
    """Polygon list, uncompressed RLE or compressed RLE -> binary HxW mask (pycocotools' rules)."""
    if isinstance(segm, list):
        rles = mask_utils.frPyObjects(segm, h, w)
        rle = mask_utils.merge(rles)
    elif isinstance(segm.get("counts"), list):
        rle = mask_utils.frPyObjects(segm, h, w)
    else:
        rle = segm
    return mask_utils.decode(rle).astype(np.uint8)


class CocoInstances(torch.utils.data.Dataset):
    def __init__(self, img_dir: str, ann_file: str, train: bool = True, flip_prob: float = 0.5,
                 filter_empty_gt: bool = True, min_size: int = 32):
        if not os.path.isdir(img_dir):
            raise UserError(f"image folder '{img_dir}' does not exist")
        self.img_dir, self.train, self.flip_prob = img_dir, train, flip_prob
        self.coco = _coco(ann_file)
        self.cat_ids = sorted(self.coco.getCatIds())
        if not self.cat_ids:
            raise UserError(f"annotation file '{ann_file}' has no categories")
        self.cat2label = {c: i + 1 for i, c in enumerate(self.cat_ids)}   # 0 = background
        self.label2cat = {v: k for k, v in self.cat2label.items()}
        ids = sorted(self.coco.imgs)
        if train:
            # mmdet 2.x ``_filter_imgs``: images holding any annotation of a known category (crowd included)
            with_ann = {a["image_id"] for a in self.coco.anns.values() if a["category_id"] in self.cat2label}
            ids = [i for i in ids if (not filter_empty_gt or i in with_ann)
                   and min(self.coco.imgs[i]["width"], self.coco.imgs[i]["height"]) >= min_size]
        if not ids:
            raise UserError(f"no usable images in '{ann_file}'")
        self.ids = ids

    @property
    def num_classes(self) -> int:
        return len(self.cat_ids)

    def _usable(self, a: Dict, width: int, height: int) -> bool:
        """mmdet 2.x ``_parse_ann_info``: the annotations that become ground truth (``area`` falls back to
        ``w * h`` when the json has none; mmdet requires the field)."""
        if a.get("ignore", False) or a.get("iscrowd", 0) or a["category_id"] not in self.cat2label:
            return False
        x1, y1, w, h = a["bbox"]
        inter_w = max(0.0, min(x1 + w, width) - max(x1, 0.0))
        inter_h = max(0.0, min(y1 + h, height) - max(y1, 0.0))
        return inter_w * inter_h > 0 and a.get("area", w * h) > 0 and w >= 1 and h >= 1

    def __len__(self) -> int:
        return len(self.ids)

    def load_image(self, image_id: int) -> Image.Image:
        path = os.path.join(self.img_dir, self.coco.imgs[image_id]["file_name"])
        try:
            with open(path, "rb") as f:
                return Image.open(f).convert("RGB")
        except Exception as e:
            raise UserError(f"cannot read image '{path}' ({e.__class__.__name__})") from None

    def __getitem__(self, idx: int):
        image_id = self.ids[idx]
        img = self.load_image(image_id)
        w, h = img.size
        info = self.coco.imgs[image_id]
        anns = [a for a in self.coco.imgToAnns.get(image_id, []) if self._usable(a, info["width"], info["height"])]
        boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                               a["bbox"][1] + a["bbox"][3]] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 0::2].clamp_(0, w)
        boxes[:, 1::2].clamp_(0, h)
        labels = torch.tensor([self.cat2label[a["category_id"]] for a in anns], dtype=torch.int64)
        if anns:
            masks = torch.from_numpy(np.stack([ann_to_mask(a["segmentation"], h, w) for a in anns]))
        else:
            masks = torch.zeros((0, h, w), dtype=torch.uint8)
        image = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()
        if self.train and self.flip_prob > 0 and torch.rand(()) < self.flip_prob:
            image = image.flip(-1)
            masks = masks.flip(-1)
            boxes = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], dim=1)
        target = {"boxes": boxes, "labels": labels, "masks": masks, "image_id": image_id}
        return image, target


def collate(batch: List) -> Dict[str, object]:
    """A batch for the engine: ``ids`` first (a tensor, so the engine counts images), then the lists."""
    images, targets = zip(*batch)
    return {"ids": torch.tensor([t["image_id"] for t in targets]), "images": list(images),
            "targets": list(targets)}


def build_det_loader(dataset, batch_size: int, *, train: bool, num_workers: int = 0, seed: int = 0,
                     sampler=None):
    from core.data import build_loader

    return build_loader(dataset, batch_size, shuffle=train, drop_last=False, num_workers=num_workers,
                        seed=seed, collate_fn=collate, sampler=sampler)
