"""Time the full training step of a recipe with the engine's settings: autocast (bf16 where the GPU has it
natively, else fp16 + GradScaler; ``--amp``), channels_last model and batch on CUDA, gradient clipping as the
script, the optimizer step and the script's after-step hook (EMA teacher). The device is synchronised only
around the timed window."""
from __future__ import annotations

import resource
import time
from typing import Dict, Optional

import torch

from core.bench.recipes import Recipe
from core.engine import amp_dtype, to_device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_gb(device: torch.device) -> float:
    """Peak allocated CUDA memory, or on CPU this process's peak resident set (everything it holds)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB on Linux


def time_recipe(recipe: Recipe, batch_size: int, device: torch.device, *, steps: int, warmup: int,
                amp: str = "auto", channels_last: Optional[bool] = None) -> Dict[str, float]:
    """Run ``warmup`` then ``steps`` training steps on one synthetic batch; pairs/s, ms/step, peak memory."""
    cl = device.type == "cuda" and recipe.extra.get("channels_last", True) if channels_last is None else \
        (channels_last and device.type == "cuda")
    model = recipe.model.to(device)
    if recipe.extra.get("teacher") is not None:
        recipe.extra["teacher"].to(device)
    if cl:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    optimizer = recipe.make_optimizer(model)
    dtype = amp_dtype(amp, device)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    batch = to_device(recipe.make_batch(batch_size, device), device, cl)
    params = [p for g in optimizer.param_groups for p in g["params"]]

    def step():
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss, _ = model(batch)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            if recipe.clip_grad:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, recipe.clip_grad)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if recipe.clip_grad:
                torch.nn.utils.clip_grad_norm_(params, recipe.clip_grad)
            optimizer.step()
        if recipe.after_step is not None:
            recipe.after_step()
        return loss

    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup):
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    _sync(device)
    dt = (time.perf_counter() - t0) / max(steps, 1)
    return {"batch": batch_size, "amp": str(dtype).replace("torch.", "") if dtype else "off",
            "channels_last": bool(cl), "ms_per_step": 1000 * dt, "pairs_per_s": batch_size / dt,
            "peak_mem_gb": peak_memory_gb(device), "loss": float(loss.detach().float())}
