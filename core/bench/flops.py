"""FLOPs of one training step with ``fvcore.nn.FlopCountAnalysis``, and the peak of known GPUs.

fvcore counts one fused multiply-add as one flop (the convention behind "ResNet-50 = 4.1 GFLOPs"); the GPU peaks
below count two flops per multiply-add, so achieved TFLOP/s = 2 x counted flops / time. Per pair, a step is
counted as the forward of every view through every network that runs, plus a backward of about 2 x forward for
the trained networks (3 x forward in all); losses, queues, EMA updates, the optimizer and the SVD / eigh of the
spectral predictors are not counted (elementwise ops and linear algebra that fvcore does not trace as matmuls).
"""
from __future__ import annotations

import re
import warnings
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from core.bench.recipes import FlopPart


def _sdpa_flop(inputs, outputs) -> int:
    """``scaled_dot_product_attention``: Q K^T and A V, each B H N M d multiply-adds (fvcore has no handle)."""
    from fvcore.nn.jit_handles import get_shape

    q, k = get_shape(inputs[0]), get_shape(inputs[1])
    *batch, n, d = q
    m = k[-2]
    prod = 1
    for b in batch:
        prod *= b
    return 2 * prod * n * m * d


def forward_flops(module: nn.Module, x: torch.Tensor) -> int:
    """fvcore flop count (multiply-adds) of ``module(x)``, in eval mode (the same ops as training)."""
    from fvcore.nn import FlopCountAnalysis

    was = module.training
    module.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            fca = FlopCountAnalysis(module, (x,))
            fca.set_op_handle("aten::scaled_dot_product_attention", _sdpa_flop)
            fca.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
            return int(fca.total())
    finally:
        module.train(was)


def part_flops(part: FlopPart, n: int = 2) -> int:
    """Forward multiply-adds of one input of ``part`` (counted on a batch of ``n``, divided by ``n``)."""
    p = next(iter(part.module.parameters()))
    x = torch.randn(n, *part.shape, device=p.device, dtype=p.dtype)
    return forward_flops(part.module, x) // n


def step_flops(parts: List[FlopPart]) -> Dict[str, float]:
    """GFLOP per pair: forward of everything, and the training step (3 x forward trained + 1 x forward rest)."""
    fwd = train = 0.0
    rows = []
    for part in parts:
        one = part_flops(part) * part.calls
        fwd += one
        train += one * (3 if part.trained else 1)
        rows.append((part.name, part.calls, part.trained, one / 1e9))
    return {"gflop_fwd": fwd / 1e9, "gflop_step": train / 1e9, "parts": rows}


# dense (no sparsity) peak TFLOP/s from the vendors' datasheets: (name pattern, bf16, fp16, fp32); None = no
# native support. bf16/fp16 are tensor-core figures, fp32 the non-tensor-core (CUDA core) figure.
GPU_PEAKS: List[Tuple[str, Optional[float], Optional[float], float]] = [
    (r"H200", 989.4, 989.4, 66.9),
    (r"H100.*PCIe", 756.0, 756.0, 51.2),
    (r"H100.*NVL", 835.0, 835.0, 60.0),
    (r"H100", 989.4, 989.4, 66.9),          # SXM
    (r"A100", 312.0, 312.0, 19.5),
    (r"V100.*PCIE", None, 112.0, 14.0),
    (r"V100", None, 125.0, 15.7),           # SXM2
    (r"\bT4\b", None, 65.0, 8.1),
    (r"L40S", 362.1, 362.1, 91.6),
    (r"\bL4\b", 121.0, 121.0, 30.3),
    (r"\bA10\b", 125.0, 125.0, 31.2),
    (r"RTX 4090", 165.2, 165.2, 82.6),
    (r"RTX 3090", 71.0, 71.0, 35.6),
    (r"A6000", 154.8, 154.8, 38.7),
]


def peak_tflops(device_name: str, dtype: str) -> Optional[float]:
    """Dense peak TFLOP/s of ``device_name`` for ``dtype`` ('bfloat16' / 'float16' / 'off' = fp32), or None
    when the GPU is not in the table (or has no native support for the dtype)."""
    col = {"bfloat16": 1, "bf16": 1, "float16": 2, "fp16": 2}.get(dtype, 3)
    for pattern, *peaks in GPU_PEAKS:
        if re.search(pattern, device_name, flags=re.IGNORECASE):
            return peaks[col - 1]
    return None
