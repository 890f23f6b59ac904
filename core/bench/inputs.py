"""The input side: a temporary ImageFolder of natural-image-like JPEGs (500 x 375 by default: smooth colour
fields, edges of random shapes and fine texture, quality 90, like ImageNet photos), timed through JPEG decode +
a recipe's augmentation in one process (pairs/s per worker core) and through a DataLoader with N workers."""
from __future__ import annotations

import os
import time
from typing import Callable, Dict, List

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter


def natural_image(rng: np.random.Generator, size=(500, 375)) -> Image.Image:
    """Low-frequency colour field + shapes with sharp edges + mid/high-frequency texture (not flat colour)."""
    w, h = size
    base = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
    img = base.copy()
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(4, 10))):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, y1 = x0 + int(rng.integers(20, w // 2)), y0 + int(rng.integers(20, h // 2))
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=fill)
    img = img.filter(ImageFilter.GaussianBlur(1.0))
    mid = Image.fromarray(rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)).resize((w, h), Image.BILINEAR)
    arr = 0.75 * np.asarray(img, np.float32) + 0.15 * np.asarray(mid, np.float32) \
        + rng.normal(0, 6, (h, w, 3)) + 0.1 * np.asarray(base, np.float32)
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8))


def make_jpeg_folder(root: str, n: int = 32, size=(500, 375), classes: int = 2, seed: int = 0) -> List[str]:
    rng = np.random.default_rng(seed)
    files = []
    for i in range(n):
        d = os.path.join(root, f"class{i % classes}")
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, f"img{i:05d}.jpg")
        natural_image(rng, size).save(path, "JPEG", quality=90)
        files.append(path)
    return files


def _load(path: str) -> Image.Image:
    with open(path, "rb") as f:
        return Image.open(f).convert("RGB")


def per_core(transform: Callable, files: List[str], repeats: int = 1) -> Dict[str, float]:
    """One process, one thread: CPU ms of JPEG decode and of the augmentation per sample, and pairs/s per core
    (process CPU time, so a machine shared with other jobs does not inflate it)."""
    torch.set_num_threads(1)
    for p in files[:2]:
        transform(_load(p))
    t_dec = t_aug = 0.0
    n = 0
    for _ in range(repeats):
        for p in files:
            t0 = time.process_time()
            img = _load(p)
            t1 = time.process_time()
            transform(img)
            t_aug += time.process_time() - t1
            t_dec += t1 - t0
            n += 1
    return {"decode_ms": 1000 * t_dec / n, "augment_ms": 1000 * t_aug / n, "pairs_per_s": n / (t_dec + t_aug)}


class _Folder(torch.utils.data.Dataset):
    def __init__(self, files: List[str], transform: Callable, repeats: int):
        self.files, self.transform, self.repeats = files, transform, repeats

    def __len__(self) -> int:
        return len(self.files) * self.repeats

    def __getitem__(self, i: int):
        return self.transform(_load(self.files[i % len(self.files)])), 0


def with_workers(transform: Callable, files: List[str], workers: int, batch_size: int = 16,
                 repeats: int = 2) -> float:
    """pairs/s through a DataLoader with ``workers`` processes (timed from the first batch on)."""
    loader = torch.utils.data.DataLoader(_Folder(files, transform, repeats), batch_size=batch_size,
                                         num_workers=workers, collate_fn=len)
    it = iter(loader)
    next(it)
    n, t0 = 0, time.perf_counter()
    for b in it:
        n += b
    dt = time.perf_counter() - t0
    return n / dt if n else float("nan")
