"""Throughput benchmark of one Siamese pretraining step (two views, SimCLR loss) on this machine.

    python -m core.bench --backbone resnet50 --image-size 224 --batch-size 128 --steps 30   # GPU
    python -m core.bench --backbone resnet_tiny --image-size 32 --batch-size 128             # CPU

It times forward + backward + optimizer step on random tensors already on the device (so it measures the
model step, not data loading), with the engine's settings: bf16 autocast and channels_last on CUDA
(``--amp off`` / ``--no-channels-last`` to compare), and synchronises only around the timed window.
Prints images/s (an image = one sample, i.e. two views).
"""
from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn as nn

from core.backbones import build_backbone
from core.engine import amp_dtype
from core.losses import nt_xent


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="resnet_tiny")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "off"])
    p.add_argument("--no-channels-last", action="store_true")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    torch.backends.cudnn.benchmark = True
    backbone = build_backbone(a.backbone, cifar_stem=a.image_size <= 64, img_size=a.image_size)
    model = nn.Sequential(backbone, nn.Linear(backbone.feat_dim, 128)).to(device)
    cl = device.type == "cuda" and not a.no_channels_last and not a.backbone.startswith("vit")
    if cl:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    dtype = amp_dtype(a.amp, device)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    x = torch.randn(2 * a.batch_size, 3, a.image_size, a.image_size, device=device)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)

    def step():
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            z = model(x)
            loss = nt_xent(z[:a.batch_size].float(), z[a.batch_size:].float(), 0.2)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()

    for _ in range(a.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    res = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "backbone": a.backbone, "image_size": a.image_size, "batch_size": a.batch_size,
           "amp": str(dtype).replace("torch.", "") if dtype else "off", "channels_last": cl,
           "threads": torch.get_num_threads(), "images_per_sec": round(a.steps * a.batch_size / dt, 1),
           "ms_per_step": round(1000 * dt / a.steps, 1)}
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
