"""Built-in synthetic labelled image dataset (no files, no download).

Ten shape classes (circle, ring, square, diamond, triangle, hexagon, star, cross, horizontal bar, vertical bar)
drawn in a random bright colour, at a random position, scale and rotation, on a dark textured background.
Every image is a pure function of ``(seed, split, index)``, at any resolution from 32 to 224 px; the
class of index ``i`` is ``i % 10`` so every split is balanced.
"""
from __future__ import annotations

import math
import os
import zlib
from typing import Callable, Optional

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SHAPES = ("circle", "ring", "square", "diamond", "triangle", "hexagon", "star", "cross", "hbar", "vbar")
SYNTHETIC_NAMES = ("synthetic", "builtin", "synthetic-shapes")
_SPLIT_OFFSET = {"train": 0, "val": 1, "test": 1, "memory": 0}


def is_synthetic(name) -> bool:
    """Is ``name`` the reserved dataset name that every script accepts instead of a path?"""
    return isinstance(name, str) and name.strip().lower() in SYNTHETIC_NAMES


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    key = zlib.crc32(f"{seed}/{_SPLIT_OFFSET.get(split, 2)}/{index}".encode())
    return np.random.default_rng(key)


def _bright_colour(rng: np.random.Generator) -> tuple:
    # a saturated hue at high value: HSV(h, 0.7-1, 0.8-1) -> RGB
    h, s, v = rng.random(), rng.uniform(0.7, 1.0), rng.uniform(0.8, 1.0)
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return tuple(int(255 * c) for c in rgb)


def _polygon(cx, cy, r, n, rot, inner=None):
    pts = []
    count = n * 2 if inner else n
    for k in range(count):
        rad = (inner if inner and k % 2 else r)
        a = rot + 2 * math.pi * k / count
        pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
    return pts


def _rotated_rect(cx, cy, w, h, rot):
    c, s = math.cos(rot), math.sin(rot)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in ((-w, -h), (w, -h), (w, h), (-w, h))]


def render_shape(label: int, size: int, rng: np.random.Generator) -> Image.Image:
    """Draw one image of class ``label`` (0-9) at ``size`` px with the randomness of ``rng``."""
    ss = 2  # supersampling factor for anti-aliasing
    S = size * ss
    bg = rng.integers(0, 60, size=3)
    arr = np.empty((S, S, 3), dtype=np.uint8)
    arr[:] = bg
    noise = rng.normal(0, 8, size=(S // 8 + 1, S // 8 + 1, 1))
    noise = np.kron(noise, np.ones((8, 8, 1)))[:S, :S]
    arr = np.clip(arr + noise, 0, 255).astype(np.uint8)
    img = Image.fromarray(arr)
    draw = ImageDraw.Draw(img)
    colour = _bright_colour(rng)
    r = S * rng.uniform(0.18, 0.34)
    cx = S * 0.5 + rng.uniform(-1, 1) * (S * 0.5 - r - 1) * 0.8
    cy = S * 0.5 + rng.uniform(-1, 1) * (S * 0.5 - r - 1) * 0.8
    rot = rng.uniform(0, 2 * math.pi)
    name = SHAPES[label]
    if name == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif name == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
        ri = r * 0.55
        draw.ellipse([cx - ri, cy - ri, cx + ri, cy + ri], fill=tuple(int(b) for b in bg))
    elif name == "square":
        draw.polygon(_polygon(cx, cy, r, 4, rot), fill=colour)
    elif name == "diamond":
        pts = [(cx + r * 0.6 * math.cos(rot + a) if i % 2 else cx + r * math.cos(rot + a),
                cy + r * 0.6 * math.sin(rot + a) if i % 2 else cy + r * math.sin(rot + a))
               for i, a in enumerate((0, math.pi / 2, math.pi, 3 * math.pi / 2))]
        draw.polygon(pts, fill=colour)
    elif name == "triangle":
        draw.polygon(_polygon(cx, cy, r, 3, rot), fill=colour)
    elif name == "hexagon":
        draw.polygon(_polygon(cx, cy, r, 6, rot), fill=colour)
    elif name == "star":
        draw.polygon(_polygon(cx, cy, r, 5, rot, inner=r * 0.42), fill=colour)
    elif name == "cross":
        draw.polygon(_rotated_rect(cx, cy, r, r * 0.28, rot), fill=colour)
        draw.polygon(_rotated_rect(cx, cy, r * 0.28, r, rot), fill=colour)
    elif name == "hbar":
        draw.polygon(_rotated_rect(cx, cy, r * 1.2, r * 0.3, rng.uniform(-0.25, 0.25)), fill=colour)
    elif name == "vbar":
        draw.polygon(_rotated_rect(cx, cy, r * 0.3, r * 1.2, rng.uniform(-0.25, 0.25)), fill=colour)
    img = img.filter(ImageFilter.GaussianBlur(radius=0.5))
    return img.resize((size, size), Image.BILINEAR)


class SyntheticShapes:
    """Map-style dataset of ``(PIL image or transformed view, label)``, deterministic in (seed, split, index)."""

    classes = list(SHAPES)

    def __init__(self, num_samples: int = 5000, image_size: int = 32, seed: int = 0, split: str = "train",
                 transform: Optional[Callable] = None, num_classes: int = 10, cache: bool = False):
        if not 8 <= image_size <= 512:
            raise ValueError(f"synthetic image_size must be in [8, 512], got {image_size}")
        if not 1 <= num_classes <= len(SHAPES):
            raise ValueError(f"synthetic num_classes must be in [1, {len(SHAPES)}], got {num_classes}")
        self.num_samples, self.image_size, self.seed, self.split = num_samples, image_size, seed, split
        self.transform, self.num_classes = transform, num_classes
        self.classes = list(SHAPES[:num_classes])
        self.targets = [i % num_classes for i in range(num_samples)]
        # cache=True renders every image once up front (before DataLoader workers fork)
        self._cache = [self._render(i) for i in range(num_samples)] if cache else None

    def __len__(self) -> int:
        return self.num_samples

    def image(self, index: int) -> Image.Image:
        if self._cache is not None:
            return self._cache[index]
        return self._render(index)

    def _render(self, index: int) -> Image.Image:
        return render_shape(self.targets[index], self.image_size, _rng(self.seed, self.split, index))

    def __getitem__(self, index: int):
        if index < 0 or index >= self.num_samples:
            raise IndexError(index)
        img = self.image(index)
        if self.transform is not None:
            img = self.transform(img)
        return img, self.targets[index]


def write_imagefolder(root: str, num_train: int = 200, num_val: int = 100, image_size: int = 32,
                      seed: int = 0, num_classes: int = 10, fmt: str = "png") -> str:
    """Write the synthetic set to ``root/{train,val}/<class>/<index>.<fmt>`` (the ImageNet layout)."""
    for split, n in (("train", num_train), ("val", num_val)):
        ds = SyntheticShapes(n, image_size, seed, split, num_classes=num_classes)
        for c in ds.classes:
            os.makedirs(os.path.join(root, split, c), exist_ok=True)
        for i in range(n):
            ds.image(i).save(os.path.join(root, split, ds.classes[ds.targets[i]], f"{split}_{i:06d}.{fmt}"))
    return root
