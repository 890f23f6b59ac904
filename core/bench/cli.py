"""Flags and tables of ``python -m core.bench`` (see :mod:`core.bench`)."""
from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from typing import Dict, List, Optional

import torch

from core.bench import flops as F
from core.bench import inputs as I
from core.bench.recipes import BUILDERS, build, parse_recipes
from core.bench.step import time_recipe
from core.errors import UserError, cli_main

CPU_BATCH, CPU_STEPS, CPU_WARMUP = 2, 1, 1
CUDA_STEPS, CUDA_WARMUP = 20, 5


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m core.bench", description=(__import__("core.bench").bench.__doc__),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="all", help=f"one of {', '.join(BUILDERS)}, a comma list, or all")
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"pairs per step (default: {CPU_BATCH} on CPU, the recipe's per-GPU batch on CUDA)")
    p.add_argument("--steps", type=int, default=None, help=f"timed steps ({CPU_STEPS} CPU / {CUDA_STEPS} CUDA)")
    p.add_argument("--warmup", type=int, default=None, help=f"untimed steps ({CPU_WARMUP} CPU / {CUDA_WARMUP} CUDA)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "off"],
                   help="autocast on CUDA as the engine (auto: bf16 where native, else fp16 + GradScaler)")
    p.add_argument("--no-channels-last", action="store_true", help="keep NCHW on CUDA")
    p.add_argument("--tiny", action="store_true", help="resnet_tiny / ViT-T and 32 px (what CI runs)")
    p.add_argument("--image-size", type=int, default=None, help="crop size (default 224, 32 with --tiny)")
    p.add_argument("--flops-only", action="store_true", help="print the FLOP table only (no timing)")
    p.add_argument("--no-input", action="store_true", help="skip the input-pipeline measurement")
    p.add_argument("--input-only", action="store_true", help="only the input pipeline (no model step)")
    p.add_argument("--torchvision-ops", action="store_true",
                   help="input pipeline with torchvision's PIL hue and ToImage/ToDtype/Normalize instead of "
                        "core.augment's exact fast versions (the 'before')")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers for the input side (default: "
                                                             "all CPU cores)")
    p.add_argument("--images", type=int, default=None, help="JPEGs in the temporary ImageFolder (default 16 on "
                                                            "CPU, 128 on CUDA)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the tables")
    return p


def _check(a) -> None:
    for k in ("batch_size", "steps", "warmup", "workers", "images", "image_size"):
        v = getattr(a, k)
        if v is not None and v < (0 if k in ("warmup", "workers") else 1):
            raise UserError(f"--{k.replace('_', '-')} must be {'>= 0' if k in ('warmup', 'workers') else '>= 1'}, "
                            f"got {v}")
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {a.device}: CUDA is not available on this machine")


def _fmt(v, nd=1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float) and abs(v) < 10:
        nd = 3
    return f"{v:,.{nd}f}" if isinstance(v, float) else str(v)


def _flop_row(name: str, recipe) -> Dict:
    t0 = time.perf_counter()
    res = F.step_flops(recipe.flop_parts)
    res["count_s"] = time.perf_counter() - t0
    return res


def run(a, on_row=None) -> Dict:
    device = torch.device(a.device)
    names = parse_recipes(a.recipe)
    cuda = device.type == "cuda"
    dev_name = torch.cuda.get_device_name(device) if cuda else "cpu"
    out: Dict = {"device": dev_name, "torch": torch.__version__, "threads": torch.get_num_threads(),
                 "tiny": a.tiny, "recipes": {}}
    for name in names:
        torch.manual_seed(0)
        recipe = build(name, a.tiny, a.image_size, device.type)
        row: Dict = {"what": recipe.what}
        if cuda:
            recipe.model.to(device)
            if recipe.extra.get("teacher") is not None:
                recipe.extra["teacher"].to(device)
        if not a.input_only:
            row.update(_flop_row(name, recipe))
        if not a.flops_only and not a.input_only:
            bs = a.batch_size or (recipe.cuda_batch if cuda else recipe.extra.get("cpu_batch", CPU_BATCH))
            steps = a.steps or (CUDA_STEPS if cuda else CPU_STEPS)
            warmup = a.warmup if a.warmup is not None else (CUDA_WARMUP if cuda else CPU_WARMUP)
            queue = recipe.extra.get("queue")
            if queue and queue % bs:
                raise UserError(f"--batch-size {bs}: the MoCo queue of {queue} keys needs a batch that divides it")
            t = time_recipe(recipe, bs, device, steps=steps, warmup=warmup, amp=a.amp,
                            channels_last=None if not a.no_channels_last else False)
            row.update(t)
            gflops_s = row["gflop_step"] * t["pairs_per_s"]  # multiply-adds / s, in G
            row["achieved_tflops"] = 2 * gflops_s / 1000
            peak = F.peak_tflops(dev_name, t["amp"]) if cuda else None
            row["peak_tflops"] = peak
            row["share_of_peak"] = row["achieved_tflops"] / peak if peak else None
        row["transform"] = recipe.transform
        out["recipes"][name] = row
        if on_row is not None:
            on_row(name, row)
        del recipe
        if cuda:
            torch.cuda.empty_cache()
    if not a.flops_only and not a.no_input:
        from core.augment.ops import ColorJitter, ToNormalizedTensor

        ColorJitter.fast_hue = ToNormalizedTensor.fast = not a.torchvision_ops
        if on_row is not None:
            on_row(None, None)
        try:
            out["input"] = measure_inputs(out["recipes"], a, cuda)
        finally:
            ColorJitter.fast_hue = ToNormalizedTensor.fast = True
    for row in out["recipes"].values():
        row.pop("transform", None)
    return out


def measure_inputs(rows: Dict, a, cuda: bool) -> Dict:
    workers = a.workers if a.workers is not None else (os.cpu_count() or 1)
    n = a.images or (128 if cuda else 16)
    res = {"workers": workers, "images": n, "recipes": {},
           "hue": "torchvision ops" if a.torchvision_ops else "core.augment fast hue + normalize"}
    with tempfile.TemporaryDirectory(prefix="bench_jpeg_") as root:
        files = I.make_jpeg_folder(root, n)
        for name, row in rows.items():
            pc = I.per_core(row["transform"], files)
            nw = (I.with_workers(row["transform"], files, workers, batch_size=max(1, min(16, n // 4)))
                  if workers else pc["pairs_per_s"])
            model = row.get("pairs_per_s")
            need = math.ceil(model / pc["pairs_per_s"]) if model else None
            res["recipes"][name] = {**pc, "pairs_per_s_workers": nw, "model_pairs_per_s": model,
                                    "workers_needed": need,
                                    "bottleneck": None if model is None else ("input" if nw < model else "model")}
    return res


def print_header(out: Dict, a) -> None:
    cuda = out["device"] != "cpu"
    print(f"device: {out['device']}  torch {out['torch']}  threads {out['threads']}"
          + ("  (tiny sizes)" if out["tiny"] else ""))
    if not cuda and not a.flops_only:
        print(f"CPU run: {a.batch_size or CPU_BATCH} pairs per step (Mask R-CNN: 1 image), {a.steps or CPU_STEPS} "
              f"timed step(s) after {a.warmup if a.warmup is not None else CPU_WARMUP} warm-up: rough figures; "
              "on a GPU the real per-GPU batches run")
    print("GFLOP = fvcore multiply-adds per pair (views x networks; step = 3 x forward of trained networks + "
          "1 x forward of teachers); achieved FLOP/s = 2 x GFLOP x pairs/s\n")
    if a.flops_only:
        print("| recipe | what | GFLOP fwd/pair | GFLOP step/pair | count s |\n|---|---|---|---|---|")
    elif not a.input_only:
        unit = "TFLOP/s" if cuda else "GFLOP/s"
        print(f"| recipe | batch | amp | ms/step | pairs/s | peak mem GB | GFLOP/pair | achieved {unit} | of peak |")
        print("|---|---|---|---|---|---|---|---|---|")


def print_row(name: str, r: Dict, cuda: bool, a) -> None:
    if a.flops_only:
        print(f"| {name} | {r['what']} | {r['gflop_fwd']:.2f} | {r['gflop_step']:.2f} | {r['count_s']:.1f} |",
              flush=True)
        return
    ach = r["achieved_tflops"] if cuda else 1000 * r["achieved_tflops"]
    share = (f"{100 * r['share_of_peak']:.1f} %" if r.get("share_of_peak") else ("peak unknown" if cuda else "-"))
    pps = r["pairs_per_s"]
    print(f"| {name} | {r['batch']} | {r['amp']} | {r['ms_per_step']:,.0f} | {pps:,.{1 if pps >= 10 else 3}f} | "
          f"{r['peak_mem_gb']:.2f} | {r['gflop_step']:.2f} | {ach:,.2f} | {share} |", flush=True)


def print_input(inp: Dict) -> None:
    w = inp["workers"]
    print(f"\ninput pipeline: {inp['images']} JPEGs 500x375 (quality 90), decode + the recipe's augmentation "
          f"({inp['hue']}); {w} DataLoader workers")
    print(f"| recipe | decode ms | augment ms | pairs/s per core | pairs/s with {w} workers | model pairs/s | "
          "workers needed | bottleneck |\n|---|---|---|---|---|---|---|---|")
    for name, r in inp["recipes"].items():
        print(f"| {name} | {r['decode_ms']:.2f} | {r['augment_ms']:.2f} | {r['pairs_per_s']:.1f} | "
              f"{_fmt(r['pairs_per_s_workers'])} | {_fmt(r['model_pairs_per_s'])} | "
              f"{_fmt(r['workers_needed'])} | {r['bottleneck'] or '-'} |", flush=True)


@cli_main
def main(argv: Optional[List[str]] = None) -> Dict:
    a = get_parser().parse_args(argv)
    _check(a)
    cuda = torch.device(a.device).type == "cuda"
    if a.json:
        out = run(a)
        print(json.dumps(out, default=str))
        return out
    head = {"device": torch.cuda.get_device_name(torch.device(a.device)) if cuda else "cpu",
            "torch": torch.__version__, "threads": torch.get_num_threads(), "tiny": a.tiny}
    print_header(head, a)
    out = run(a, on_row=lambda name, row: (None if a.input_only else print_row(name, row, cuda, a)) if name else
              print("\nmeasuring the input pipeline ...", flush=True))
    if out.get("input"):
        print_input(out["input"])
    return out
