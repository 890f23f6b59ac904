"""Hue jitter of PIL RGB images, bit-exact with torchvision's PIL ``adjust_hue`` and about twice as fast.

torchvision's PIL path converts RGB -> HSV (Pillow's ``rgb2hsv``, bytes), adds ``int32(hue_factor * 255)`` to
the H byte (wrapping mod 256) and converts back (Pillow's ``hsv2rgb``). Both conversions are per-pixel float
loops in C and were the hot spot of the colour jitter. Here the same function is evaluated plane-wise with
numpy, through small tables that Pillow itself computes once per process:

* ``U[case, cr, d]``: Pillow's H byte for a pixel whose maximum channel / minimum channel are ``case`` (ties
  broken as Pillow: r, then g, then b wins the maximum), chroma ``cr = max - min`` and ``d = max - middle``
  (H depends on the channel differences only);
* ``S[cr, v]`` (Pillow's S byte) and ``P[cr, v] = round(v (1 - S / 255))`` (the "p" value of ``hsv2rgb``);
* ``KM[s, h]``: ``1 - fs f`` (odd sectors, "q") or ``1 - fs (1 - f)`` (even sectors, "t") of ``hsv2rgb`` in
  float32; ``floor(v KM + 0.5)`` equals Pillow's double ``round(v (1 - ...))`` for every (s, h, v), which
  :func:`check_rounding` verifies and the tests run.

The sector (``floor(6 h / 255) % 6``) picks which of (v, m, p) goes to which channel, as ``hsv2rgb``.
``tests/core/test_bench.py`` compares the result with ``torchvision``'s ``adjust_hue`` on all 2^24 colours.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
from PIL import Image

# (max channel, min channel) for the six orderings; index = the 'case' of U
_CASES = ((0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1))
_TABLES: Optional[Tuple[np.ndarray, ...]] = None


def _hsv_factors():
    """Pillow ``hsv2rgb``'s f (float32) and fs (float32) for every byte, and the sector of every H byte."""
    h = np.arange(256, dtype=np.float32).astype(np.float64) * 6.0 / 255.0
    i = np.floor(h)
    f = (h - i).astype(np.float32)
    fs = (np.arange(256, dtype=np.float32).astype(np.float64) / 255.0).astype(np.float32)
    return f, fs, (i.astype(np.int64) % 6)


def _build():
    cr, b = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")  # b: v for S/P, d for U
    px = np.stack([b, np.clip(b - cr, 0, 255), b], -1).astype(np.uint8)  # max b, min b - cr
    S = np.asarray(Image.fromarray(px, "RGB").convert("HSV"))[..., 1]
    U = np.zeros((6, 256, 256), np.uint8)
    for c, (imax, imin) in enumerate(_CASES):
        p = np.zeros((256, 256, 3), np.uint8)
        p[..., imax] = 255
        p[..., imin] = 255 - cr
        p[..., 3 - imax - imin] = np.where(b <= cr, 255 - b, 255)
        U[c] = np.asarray(Image.fromarray(p, "RGB").convert("HSV"))[..., 0]
    f, fs, sector = _hsv_factors()
    k_q = 1.0 - (fs[:, None] * f[None, :]).astype(np.float64)                      # fs * f in float32
    k_t = 1.0 - fs.astype(np.float64)[:, None] * (1.0 - f.astype(np.float64))[None, :]
    KM = np.where(sector[None, :] % 2 == 1, k_q, k_t).astype(np.float32)
    v = np.arange(256, dtype=np.float64)
    P = np.floor(v[None, :] * (1.0 - fs.astype(np.float64))[S.astype(np.intp)] + 0.5).astype(np.uint8)
    SP = S.astype(np.uint16) | (P.astype(np.uint16) << 8)
    first = tuple(int(np.argmax(sector >= k)) for k in range(1, 6))  # first H byte of sectors 1..5
    return U.ravel(), SP.ravel(), KM.ravel(), first


def tables():
    global _TABLES
    if _TABLES is None:
        _TABLES = _build()
    return _TABLES


def check_rounding() -> int:
    """Count the (s, h, v) where float32 ``floor(v KM + 0.5)`` differs from Pillow's double ``round`` (0)."""
    f, fs, _ = _hsv_factors()
    bad = 0
    v = np.arange(256, dtype=np.float64)
    for k in (1.0 - (fs[:, None] * f[None, :]).astype(np.float64),
              1.0 - fs.astype(np.float64)[:, None] * (1.0 - f.astype(np.float64))[None, :]):
        x = v[None, None, :] * k[:, :, None]
        exact = np.floor(x) + (x - np.floor(x) >= 0.5)  # C round(): half away from zero
        fast = np.floor(v.astype(np.float32)[None, None, :] * k.astype(np.float32)[:, :, None] + np.float32(0.5))
        bad += int((fast != exact).sum())
    return bad


def hue_planes(r: np.ndarray, g: np.ndarray, b: np.ndarray, hue_factor: float):
    """The hue-shifted (R, G, B) uint8 planes of uint8 planes ``r, g, b``."""
    U, SP, KM, first = tables()
    mx = np.maximum(np.maximum(r, g), b)
    mn = np.minimum(np.minimum(r, g), b)
    cr = mx - mn
    rmax = r == mx
    gmax = (g == mx) & ~rmax
    bmax = ~(rmax | gmax)
    # case = 0/1 (r max; min g or b), 2/3 (g max; min r or b), 4/5 (b max; min r or g), in uint8 arithmetic
    case = (_mask(rmax) & _u8(g > b)) | (_mask(gmax) & (_u8(r > b) + np.uint8(2))) | \
        (_mask(bmax) & (_u8(r > g) + np.uint8(4)))
    d = mx - (r + g + b - mx - mn)  # uint8 arithmetic wraps around: the middle value exactly
    idx = case.astype(np.intp)
    idx <<= 8
    idx |= cr
    idx <<= 8
    idx |= d
    hh = U.take(idx)
    hh += np.uint8(np.int32(hue_factor * 255).astype(np.uint8))  # torchvision: wraps mod 256
    cv = cr.astype(np.intp)
    cv <<= 8
    cv |= mx
    sp = SP.take(cv)
    p = (sp >> 8).astype(np.uint8)
    si = (sp & 255).astype(np.intp)
    si <<= 8
    si |= hh
    m = mx.astype(np.float32)
    m *= KM.take(si)
    m += np.float32(0.5)
    m = m.astype(np.uint8)
    s1, s2, s3, s4, s5 = (hh >= t for t in first)
    s6 = hh == 255  # sector 6 == 0
    z0 = ~s1 | s6
    z1, z2, z3, z4, z5 = s1 & ~s2, s2 & ~s3, s3 & ~s4, s4 & ~s5, s5 & ~s6
    # hsv2rgb: sector 0 (v, t, p), 1 (q, v, p), 2 (p, v, t), 3 (p, q, v), 4 (t, p, v), 5 (v, p, q); the sectors
    # are disjoint, so each channel is an OR of the three values under 0 / 255 byte masks
    R = (mx & _mask(z0 | z5)) | (m & _mask(z1 | z4)) | (p & _mask(z2 | z3))
    G = (m & _mask(z0 | z3)) | (mx & _mask(z1 | z2)) | (p & _mask(z4 | z5))
    B = (p & _mask(z0 | z1)) | (m & _mask(z2 | z5)) | (mx & _mask(z3 | z4))
    return R, G, B


def _u8(x: np.ndarray) -> np.ndarray:
    return x.view(np.uint8)


def _mask(x: np.ndarray) -> np.ndarray:
    """bool -> 0 / 255 bytes (uint8 negation wraps 1 to 255)."""
    return np.negative(x.view(np.uint8))


def adjust_hue_pil(img: Image.Image, hue_factor: float) -> Image.Image:
    """torchvision ``adjust_hue`` for a PIL image (RGB fast path; other modes as torchvision)."""
    if not -0.5 <= hue_factor <= 0.5:
        raise ValueError(f"hue_factor ({hue_factor}) is not in [-0.5, 0.5].")
    if img.mode != "RGB":
        from torchvision.transforms import _functional_pil as FP

        return FP.adjust_hue(img, hue_factor)
    planes = [np.asarray(c) for c in img.split()]
    return Image.merge("RGB", [Image.fromarray(c) for c in hue_planes(*planes, hue_factor)])
