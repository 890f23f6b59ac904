"""Augmentation operations that torchvision does not provide with the originals' exact semantics."""
from __future__ import annotations

from typing import Callable, List, Sequence

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps
from torchvision import tv_tensors
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import functional as TF

from core.augment.hue import adjust_hue_pil


class GaussianBlur:
    """PIL ``ImageFilter.GaussianBlur(radius=sigma)`` with ``sigma ~ U[sigma_min, sigma_max]``.

    This is the blur of MoCo v2 / SimSiam / BYOL / Barlow Twins / TWIST (``moco/loader.py``): the radius
    is drawn uniformly and passed to PIL (which treats it as the standard deviation). Randomness comes from
    torch's generator so runs are reproducible under :func:`core.data.seed_everything`.
    """

    def __init__(self, sigma: Sequence[float] = (0.1, 2.0)):
        self.sigma = (float(sigma[0]), float(sigma[1]))

    def __call__(self, img: Image.Image) -> Image.Image:
        lo, hi = self.sigma
        radius = lo + (hi - lo) * torch.rand(()).item()
        return img.filter(ImageFilter.GaussianBlur(radius=radius))

    def __repr__(self) -> str:
        return f"GaussianBlur(sigma={self.sigma})"


class Solarize:
    """PIL ``ImageOps.solarize(img, threshold)``: pixels >= threshold are inverted (always applied;
    wrap in ``RandomApply`` for a probability)."""

    def __init__(self, threshold: int = 128):
        self.threshold = threshold

    def __call__(self, img: Image.Image) -> Image.Image:
        return ImageOps.solarize(img, self.threshold)

    def __repr__(self) -> str:
        return f"Solarize(threshold={self.threshold})"


class Equalize:
    """PIL ``ImageOps.equalize``."""

    def __call__(self, img: Image.Image) -> Image.Image:
        return ImageOps.equalize(img)


class MultiView:
    """Apply each transform to the same image and return the list of views (two-crop / multi-crop)."""

    def __init__(self, transforms: Sequence[Callable]):
        self.transforms = list(transforms)

    def __call__(self, img) -> List:
        return [t(img) for t in self.transforms]

    def __len__(self) -> int:
        return len(self.transforms)

    def __repr__(self) -> str:
        inner = ",\n  ".join(repr(t) for t in self.transforms)
        return f"MultiView([\n  {inner}])"


class ColorJitter(T.ColorJitter):
    """torchvision ``v2.ColorJitter`` (same parameters, random draws and order of the four adjustments) whose
    hue step on PIL RGB images runs :func:`core.augment.hue.adjust_hue_pil`: bit-exact with torchvision's PIL
    ``adjust_hue`` and about twice as fast. Everything else goes through torchvision unchanged."""

    fast_hue = True  # class switch: False = torchvision's PIL hue (for before/after timings)

    def _call_kernel(self, functional, inpt, *args, **kwargs):
        if self.fast_hue and functional is TF.adjust_hue and isinstance(inpt, Image.Image) and inpt.mode == "RGB":
            return adjust_hue_pil(inpt, *args, **kwargs)
        return super()._call_kernel(functional, inpt, *args, **kwargs)


class ToNormalizedTensor:
    """``ToImage`` + ``ToDtype(float32, scale=True)`` + ``Normalize(mean, std)`` in one step: for a PIL RGB image
    each channel is a lookup into a 256-entry table that these three torchvision transforms computed once on
    every byte value (elementwise IEEE operations, so the result is bit-identical; about 2x faster). Other
    inputs go through the three transforms."""

    fast = True  # class switch: False = the three torchvision transforms (for before/after timings)

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean, self.std = list(mean), list(std)
        self.slow = T.Compose([T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(self.mean, self.std)])
        ramp = torch.arange(256, dtype=torch.uint8).view(1, 1, 256).expand(3, 1, 256).contiguous()
        self.lut = self.slow(tv_tensors.Image(ramp)).reshape(3, 256).numpy().copy()

    def __call__(self, img):
        if not (self.fast and isinstance(img, Image.Image) and img.mode == "RGB"):
            return self.slow(img)
        out = np.empty((3, img.height, img.width), np.float32)
        for c, plane in enumerate(img.split()):
            np.take(self.lut[c], np.asarray(plane), out=out[c])
        return tv_tensors.Image(torch.from_numpy(out))

    def __repr__(self) -> str:
        return f"ToNormalizedTensor(mean={self.mean}, std={self.std})"
