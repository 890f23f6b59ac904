"""Built-in dataset of real images: the 1,797 handwritten digits scikit-learn ships inside its package
(``sklearn.datasets.load_digits``, UCI optical digits: 8x8 grey, values 0-16, 10 classes; no download).

Each image is scaled to 0-255 (``round(v * 255 / 16)``), upscaled to the run's ``image_size`` (bilinear) and
repeated over 3 channels. The train/val split is fixed (independent of any run seed): within every class, a
permutation by ``SPLIT_SEED`` sends ``round(0.2 n_class)`` images to ``val``, the rest to ``train``. Both
splits are ordered round-robin over the classes, so any prefix (``num_samples``) stays class-balanced.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Callable, List, Optional, Tuple

import numpy as np
from PIL import Image

DIGITS_NAMES = ("digits", "sklearn-digits")
SPLIT_SEED = 0
VAL_FRACTION = 0.2
_SPLITS = {"train": "train", "memory": "train", "val": "val", "test": "val"}


def is_digits(name) -> bool:
    """Is ``name`` the reserved name of the built-in digits set?"""
    return isinstance(name, str) and name.strip().lower() in DIGITS_NAMES


@lru_cache(maxsize=1)
def raw_digits() -> Tuple[np.ndarray, np.ndarray]:
    """(images N x 8 x 8 in 0..16, labels N) as shipped by scikit-learn."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.astype(np.float64), d.target.astype(np.int64)


def _round_robin(groups: List[List[int]]) -> List[int]:
    out, depth = [], max(len(g) for g in groups)
    for i in range(depth):
        out += [g[i] for g in groups if i < len(g)]
    return out


@lru_cache(maxsize=4)
def split_indices(split: str) -> Tuple[int, ...]:
    """Indices into :func:`raw_digits` of ``train`` or ``val`` (fixed, stratified, round-robin ordered)."""
    _, y = raw_digits()
    rng = np.random.default_rng(SPLIT_SEED)
    train, val = [], []
    for c in range(10):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        n_val = int(round(VAL_FRACTION * len(idx)))
        val.append(sorted(idx[:n_val].tolist()))
        train.append(sorted(idx[n_val:].tolist()))
    return tuple(_round_robin(val if _SPLITS[split] == "val" else train))


def to_uint8(img8: np.ndarray) -> np.ndarray:
    """0..16 grey levels -> 0..255 uint8."""
    return np.rint(img8 * 255.0 / 16.0).astype(np.uint8)


class Digits:
    """Map-style dataset of ``(PIL RGB image or transformed view, label)`` at ``image_size`` px."""

    classes = [str(c) for c in range(10)]

    def __init__(self, split: str = "train", image_size: int = 32, transform: Optional[Callable] = None,
                 num_samples: Optional[int] = None):
        if split not in _SPLITS:
            raise ValueError(f"digits split must be one of {sorted(_SPLITS)}, got {split!r}")
        if not 8 <= image_size <= 512:
            raise ValueError(f"digits image_size must be in [8, 512], got {image_size}")
        x, y = raw_digits()
        idx = list(split_indices(split))
        if num_samples:
            idx = idx[:num_samples]
        self.split, self.image_size, self.transform, self.indices = split, image_size, transform, idx
        self.targets = [int(y[i]) for i in idx]
        self._images = [self._render(x[i]) for i in idx]

    def _render(self, img8: np.ndarray) -> Image.Image:
        im = Image.fromarray(to_uint8(img8))
        if self.image_size != 8:
            im = im.resize((self.image_size, self.image_size), Image.BILINEAR)
        return im.convert("RGB")

    def __len__(self) -> int:
        return len(self.indices)

    def image(self, index: int) -> Image.Image:
        return self._images[index]

    def __getitem__(self, index: int):
        if index < 0 or index >= len(self):
            raise IndexError(index)
        img = self._images[index]
        if self.transform is not None:
            img = self.transform(img)
        return img, self.targets[index]
