"""Built-in synthetic instance-segmentation set in COCO format (no download).

Each image holds 1..``max_objects`` non-overlapping shapes on a dark textured background. Categories (ids 1-4):
``circle``, ``square``, ``triangle`` (polygon annotations) and ``ring`` (a disc with a hole, stored as
compressed RLE since a polygon cannot hold a hole). Every image is a pure function of ``(seed, split, index)``;
the files are written once to ``root/{train,val}/*.png`` and ``root/annotations/instances_{split}.json``.
"""
from __future__ import annotations

import json
import math
import os
import zlib
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

CATEGORIES = ({"id": 1, "name": "circle"}, {"id": 2, "name": "square"}, {"id": 3, "name": "triangle"},
              {"id": 4, "name": "ring"})
COLOURS = ((230, 60, 60), (60, 200, 80), (70, 110, 240), (235, 200, 50), (200, 80, 220), (60, 210, 210))


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(f"det/{seed}/{split}/{index}".encode()))


def _polygon(name: str, cx: float, cy: float, r: float, rot: float) -> List[Tuple[float, float]]:
    if name == "square":
        n, rr = 4, r
    elif name == "triangle":
        n, rr = 3, r
    else:  # circle / ring outline
        n, rr = 32, r
    return [(cx + rr * math.cos(rot + 2 * math.pi * k / n), cy + rr * math.sin(rot + 2 * math.pi * k / n))
            for k in range(n)]


def render_image(seed: int, split: str, index: int, size: int, max_objects: int = 3
                 ) -> Tuple[Image.Image, List[Dict]]:
    """One image and its annotations (``category_id``, ``mask`` uint8 HxW, ``polygon`` or None)."""
    rng = _rng(seed, split, index)
    base = rng.integers(0, 50, size=3)
    noise = rng.normal(0, 6, size=(size, size, 1))
    arr = np.clip(base + noise, 0, 255).astype(np.uint8)
    img = Image.fromarray(arr)
    count = int(rng.integers(1, max_objects + 1))
    placed: List[Tuple[float, float, float]] = []
    anns = []
    for _ in range(count):
        for _attempt in range(30):
            r = size * rng.uniform(0.10, 0.22)
            cx, cy = rng.uniform(r + 1, size - r - 1, size=2)
            if all(math.hypot(cx - px, cy - py) > r + pr + 2 for px, py, pr in placed):
                break
        else:
            continue
        placed.append((cx, cy, r))
        cat = int(rng.integers(1, len(CATEGORIES) + 1))
        name = CATEGORIES[cat - 1]["name"]
        rot = float(rng.uniform(0, 2 * math.pi))
        colour = COLOURS[int(rng.integers(0, len(COLOURS)))]
        poly = _polygon(name, cx, cy, r, rot)
        poly = [(round(x, 2), round(y, 2)) for x, y in poly]
        if name == "ring":  # rasterised here, stored as RLE
            m = Image.new("L", (size, size), 0)
            dm = ImageDraw.Draw(m)
            dm.polygon(poly, fill=1)
            dm.polygon(_polygon("circle", cx, cy, r * 0.5, rot), fill=0)
            mask = np.array(m, dtype=np.uint8)
        else:  # rasterised exactly as a COCO reader will (pycocotools), so image, mask and box agree
            flat = [c for pt in poly for c in pt]
            mask = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([flat], size, size)))
        if mask.sum() < 4:
            continue
        ImageDraw.Draw(img).bitmap((0, 0), Image.fromarray(mask * 255), fill=colour)
        anns.append({"category_id": cat, "mask": mask, "polygon": None if name == "ring" else poly})
    return img, anns


def _annotation(ann: Dict, ann_id: int, image_id: int) -> Dict:
    mask = ann["mask"]
    rle = mask_utils.encode(np.asfortranarray(mask))
    x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
    out = {"id": ann_id, "image_id": image_id, "category_id": ann["category_id"], "iscrowd": 0,
           "area": float(mask_utils.area(rle)), "bbox": [x, y, w, h]}
    if ann["polygon"] is not None:
        out["segmentation"] = [[c for pt in ann["polygon"] for c in pt]]
    else:
        rle["counts"] = rle["counts"].decode("ascii")
        out["segmentation"] = rle
    return out


def write_synthetic_coco(root: str, num_train: int = 64, num_val: int = 16, image_size: int = 96,
                         seed: int = 0, max_objects: int = 3) -> Dict[str, str]:
    """Write the set under ``root`` (skipped when an identical set is already there). Returns the paths
    ``{'train_ann', 'train_img', 'val_ann', 'val_img'}``."""
    meta = {"num_train": num_train, "num_val": num_val, "image_size": image_size, "seed": seed,
            "max_objects": max_objects, "version": 1}
    paths = {}
    stamp = os.path.join(root, "annotations", "synthetic_meta.json")
    for split in ("train", "val"):
        paths[f"{split}_ann"] = os.path.join(root, "annotations", f"instances_{split}.json")
        paths[f"{split}_img"] = os.path.join(root, split)
    if os.path.isfile(stamp):
        with open(stamp) as f:
            if json.load(f) == meta and all(os.path.exists(p) for p in paths.values()):
                return paths
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    for split, n in (("train", num_train), ("val", num_val)):
        os.makedirs(paths[f"{split}_img"], exist_ok=True)
        images, annotations = [], []
        for i in range(n):
            img, anns = render_image(seed, split, i, image_size, max_objects)
            name = f"{i:06d}.png"
            img.save(os.path.join(paths[f"{split}_img"], name))
            images.append({"id": i + 1, "file_name": name, "width": image_size, "height": image_size})
            for a in anns:
                annotations.append(_annotation(a, len(annotations) + 1, i + 1))
        data = {"images": images, "annotations": annotations, "categories": [dict(c) for c in CATEGORIES],
                "info": {"description": f"synthetic shapes ({split})", **meta}}
        tmp = paths[f"{split}_ann"] + ".tmp"
        with open(tmp, "w") as f:
            json.dump(data, f)
        os.replace(tmp, paths[f"{split}_ann"])
    with open(stamp, "w") as f:
        json.dump(meta, f)
    return paths
