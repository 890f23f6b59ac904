"""Run every training entry point of the five papers for a few steps on this machine, then resume one of them.

    python tools/gpu_check.py            # `make gpu-check`: on CUDA R50 / ViT-S at 224 px, ~20 steps each
    python tools/gpu_check.py --tiny     # resnet_tiny / 32 px on CPU (what CI runs; the default without CUDA)

Each entry point runs through its own CLI (``subprocess``, from its paper folder) on the built-in synthetic
data, with the original precision (the scripts' defaults) and the engine's channels_last on CUDA; with 2+
visible GPUs the distributed entry points start 2 NCCL processes. One line per entry point: ok / error, median
step time and peak CUDA memory of single-process runs (an optimizer-step hook in the child; ``-`` where the
script runs its steps in processes it spawns), wall time. Each entry has a timeout (``--timeout``).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
PAPERS = os.path.join(REPO, "papers")


# ------------------------------------------------------------------------------------------------ child side
def child(out_json: str, argv: List[str]) -> None:
    """Run ``argv[0]`` as ``__main__`` with an optimizer-step hook that records step times (synchronised on
    CUDA) and, at exit, the peak CUDA memory."""
    import runpy

    import torch

    times: List[float] = []

    def hook(opt, args, kwargs):
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
        times.append(time.perf_counter())

    from torch.optim.optimizer import register_optimizer_step_post_hook

    register_optimizer_step_post_hook(hook)
    sys.argv = list(argv)
    sys.path.insert(0, os.path.dirname(os.path.abspath(argv[0])))
    code = 0
    try:
        runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        steps = [b - a for a, b in zip(times, times[1:])][2:] or [b - a for a, b in zip(times, times[1:])]
        peak = torch.cuda.max_memory_allocated() / 2 ** 30 if torch.cuda.is_initialized() else None
        with open(out_json, "w") as f:
            json.dump({"steps": len(times), "step_s": statistics.median(steps) if steps else None,
                       "peak_gb": peak}, f)
    sys.exit(code)


# ------------------------------------------------------------------------------------------------ entry points
class Plan:
    """Sizes of one run: real recipes on CUDA, tiny ones otherwise."""

    def __init__(self, tiny: bool, gpus: int, work: str, data: str):
        self.tiny, self.gpus, self.work, self.data = tiny, gpus, work, data
        self.size = 32 if tiny else 224
        self.batch = 8 if tiny else 64
        self.steps = 2 if tiny else 20
        self.samples = self.batch * self.steps * max(gpus, 1)
        self.r50 = "resnet_tiny" if tiny else "resnet50"
        self.workers = 0 if tiny else 8

    def dir(self, name: str) -> str:
        d = os.path.join(self.work, name)
        os.makedirs(d, exist_ok=True)
        return d


def _first(pattern: str) -> str:
    hits = sorted(glob.glob(pattern, recursive=True))
    if not hits:
        raise FileNotFoundError(f"no checkpoint matches {pattern}")
    return hits[-1]


def entries(p: Plan) -> List[Dict]:
    """(name, paper folder, argv(plan) -> list, env) in dependency order; argv may look up earlier outputs."""
    py = sys.executable
    t, s, b, n, w, k = p.tiny, str(p.size), str(p.batch), str(p.samples), str(p.workers), str(p.steps)
    ug_tiny = ["arch=resnet_tiny", "projector_input_dim=128", "projector_hidden_dim=32", "projector_output_dim=32"]
    ug = ["configs/unigrad.py", "train_datadir=synthetic", "test_datadir=synthetic", f"image_size={s}",
          f"num_samples={n}", f"n_workers={w}", f"whole_batch_size={b}", f"max_steps_per_epoch={k}", "epochs=1",
          "warmup_epochs=1", "print_freq=5", "save_freq=1", f"work_dir={p.dir('unigrad')}"] + (ug_tiny if t else [])
    simsiam = ["-a", p.r50, "--fix-pred-lr", "--pred-type", "poly", "--sigma", "1", "--pred-location", "target",
               "synthetic", "--image-size", s, "-j", w, "--max-steps-per-epoch", k, "-b", b, "--epochs", "1",
               "--output-dir", p.dir("rdm_simsiam")] + (["--dim", "64", "--pred-dim", "16"] if t else [])
    solo = (f"--max_epochs 1 --batch_size {b} --max_steps_per_epoch {k} --num_workers {w} "
            + ("--backbone resnet_tiny --proj_hidden_dim 64 --proj_output_dim 32 --crop_size 32 " if t else "")
            + ("" if p.gpus >= 2 else "--devices 0 ") + f"--checkpoint_dir {p.dir('rdm_solo')}")
    mp = (["--multiprocessing-distributed", "--world-size", "1", "--rank", "0"] if p.gpus >= 2 else [])
    if p.gpus >= 2:
        simsiam += mp + ["--dist-url", "tcp://127.0.0.1:29515", "-b", str(p.batch * p.gpus)]
    moco_k = str(p.batch * max(p.gpus, 1) * 4)
    moco = ["synthetic", "-a", p.r50, "--image-size", s, "-j", w, "--batch-size", str(p.batch * max(p.gpus, 1)),
            "--moco-k", moco_k, "--num-samples", n, "--max-steps", k, "--results-dir", p.dir("au_moco")]
    if p.gpus >= 2:
        moco += ["--multiprocessing-distributed", "--world-size", "1", "--rank", "0", "--dist-url",
                 "tcp://127.0.0.1:29517"]
    twist = ["train.py", "--data-path", "synthetic", "--output_dir", p.dir("twist_r50"), "--epochs", "1",
             "--max_steps_per_epoch", k, "--num_samples", n, "--num_workers", w, "--batch-size", b,
             "--img_size", s, "--local_crops_number", "2" if t else "6"]
    if t:
        twist += ["--backbone", "resnet_tiny", "--dim", "16", "--hid_dim", "32", "--amp", "0"]
    vit = ["train.py", "--data-path", "synthetic", "--output_dir", p.dir("twist_vits"), "--epochs", "1",
           "--mme_epochs", "1", "--max_steps_per_epoch", k, "--num_samples", n, "--num_workers", w,
           "--batch-size", b, "--img_size", "28" if t else s, "--backbone", "vit_t" if t else "vit_s",
           "--clip_norm", "3.0",
           "--lam1", "-0.6", "--lam2", "1.0", "--act", "gelu", "--optim", "admw", "--use_momentum_encoder", "1",
           "--lr", "0.0003", "--weight_decay", "0.06", "--weight_decay_end", "0.12",
           "--local_crops_number", "0" if t else "6"]
    if t:
        vit += ["--dim", "16", "--hid_dim", "32", "--amp", "0", "--patch-size", "4"]
    det_cfg = os.path.join(PAPERS, "selfsup_det", "configs",
                           "synthetic_tiny.py" if t else "mask_rcnn_r50_fpn_mocov2-pretrain_1x_coco.py")
    det = [os.path.join(REPO, "tools", "train_det.py"), det_cfg, "--work-dir", p.dir("det"), "--epochs", "1",
           "--max-iters-per-epoch", k, "--no-eval", "--data-root", "synthetic", "--pretrained", "none",
           "--cfg-options", f"data.synthetic.num_train={max(p.steps * 2, 8) * max(p.gpus, 1)}"]
    if p.gpus >= 2:
        det += ["--gpus", "0", "1"] + mp + ["--dist-url", "tcp://127.0.0.1:29516"]
    ug_run = [py, "pretrain.py"] if p.gpus < 2 else ["./run_pretrain.sh", "./configs/unigrad.py", str(p.gpus)]
    twist_launch = [py, "-m", "torch.distributed.launch", f"--nproc_per_node={p.gpus}", "--use_env",
                    "--master_port=29519"] if p.gpus >= 2 else [py]
    return [
        dict(name="unigrad pretrain.py", cwd="unigrad", argv=lambda: ug_run + (ug if p.gpus < 2 else ug[1:])),
        dict(name="unigrad lineval.py", cwd="unigrad", argv=lambda: [
            py, "lineval.py", "--data", p.data, "-a", p.r50, "--pretrained",
            os.path.join(p.dir("unigrad"), "latest.pth.tar"), "--epochs", "1", "-b", b, "--image-size", s,
            "-j", w, "--max-steps-per-epoch", k, "--save_name", os.path.join(p.dir("unigrad_lin"), "lin.pth.tar")]),
        dict(name="rdm main_simsiam.py", cwd="rdm", argv=lambda: [py, "main_simsiam.py"] + simsiam),
        dict(name="rdm main_lincls.py", cwd="rdm", argv=lambda: [
            py, "main_lincls.py", "-a", p.r50, "--pretrained",
            _first(os.path.join(p.dir("rdm_simsiam"), "checkpoint_*.pth.tar")), "--lars", "synthetic",
            "--image-size", s, "-j", w, "--max-steps-per-epoch", k, "--epochs", "1", "-b", b,
            "--output-dir", p.dir("rdm_lincls")]),
        dict(name="rdm main_pretrain.py", cwd="rdm", argv=lambda: [
            "sh", "bash_files/pretrain/imagenet-100/rdmsimsiam.sh", "400", "poly", "target", "-1"],
             env=lambda: {"DATA_DIR": "synthetic", "EXTRA_ARGS": solo}),
        dict(name="rdm main_linear.py", cwd="rdm", argv=lambda: [
            "sh", "bash_files/linear/imagenet-100/rdmsimsiam_linear.sh"],
             env=lambda: {"DATA_DIR": "synthetic", "PRETRAINED": _first(os.path.join(p.dir("rdm_solo"), "**",
                                                                                      "*.ckpt")),
                          "EXTRA_ARGS": solo.replace(p.dir("rdm_solo"), p.dir("rdm_linear"))
                          .replace("--proj_hidden_dim 64 --proj_output_dim 32 ", "")}),
        dict(name="align_uniform main_moco.py", cwd="align_uniform", argv=lambda: [py, "main_moco.py"] + moco),
        dict(name="align_uniform main_lincls.py", cwd="align_uniform", argv=lambda: [
            py, "main_lincls.py", "-a", p.r50, "--pretrained",
            _first(os.path.join(p.dir("au_moco"), "*", "checkpoint_0000.pth.tar")), p.data, "--image-size", s,
            "-j", w, "--epochs", "1", "--batch-size", b, "--max-steps", k]),
        dict(name="twist train.py (R50)", cwd="twist", argv=lambda: twist_launch + twist),
        dict(name="twist train.py (ViT-S)", cwd="twist", argv=lambda: twist_launch + vit),
        dict(name="twist evaluate.py", cwd="twist", argv=lambda: [
            py, "evaluate.py", p.data, os.path.join(p.dir("twist_r50"), "checkpoint.pth"), "--weight-decay", "0",
            "--checkpoint-dir", p.dir("twist_eval") + "/", "--batch-size", b, "--val_epoch", "1",
            "--lr-classifier", "0.2", "--img_size", s, "--workers", w, "--max_steps_per_epoch", k, "--epochs", "1",
            "--backbone", p.r50]),
        dict(name="twist evaluate_vitlinear.py", cwd="twist", argv=lambda: [
            py, "evaluate_vitlinear.py", "--arch", "vit_t" if t else "vit_s", "--pretrained_weights",
            os.path.join(p.dir("twist_vits"), "checkpoint.pth"), "--lr", "0.02", "--data_path", "synthetic",
            "--output_dir", p.dir("twist_vitlin"), "--epochs", "1", "--batch_size_per_gpu", b,
            "--img_size", "28" if t else s, "--max_steps_per_epoch", k, "--num_workers", w]
            + (["--patch_size", "4"] if t else [])),
        dict(name="tools/train_det.py", cwd=None, argv=lambda: [py] + det),
        dict(name="resume: align_uniform main_moco.py", cwd="align_uniform", argv=lambda: [
            py, "main_moco.py"] + moco + ["--epochs", "2", "--resume",
                                          _first(os.path.join(p.dir("au_moco"), "*", "checkpoint_0000.pth.tar"))]),
    ]


def run_one(e: Dict, timeout: float, log_dir: str) -> Dict:
    name = e["name"]
    t0 = time.perf_counter()
    try:
        argv = e["argv"]()
        extra = e.get("env", lambda: {})()
    except FileNotFoundError as err:  # an earlier entry did not write what this one loads
        return {"name": name, "ok": False, "error": str(err), "wall_s": 0.0}
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
               PYTHONWARNINGS="ignore", **extra)
    cwd = os.path.join(PAPERS, e["cwd"]) if e["cwd"] else REPO
    stats = os.path.join(log_dir, name.replace(" ", "_").replace("/", "_") + ".json")
    if argv[0] == sys.executable and argv[1].endswith(".py"):  # in-process hook for step time / memory
        argv = [sys.executable, os.path.abspath(__file__), "--child", stats] + argv[1:]
    log = os.path.join(log_dir, name.replace(" ", "_").replace("/", "_") + ".log")
    try:
        with open(log, "w") as f:
            r = subprocess.run(argv, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=timeout)
        ok, err = r.returncode == 0, ""
        if not ok:
            with open(log) as f:
                tail = [ln.strip() for ln in f.read().splitlines() if ln.strip()]
            err = (tail[-1] if tail else f"exit {r.returncode}")[:200]
    except subprocess.TimeoutExpired:
        ok, err = False, f"timeout after {timeout:.0f} s"
    res = {"name": name, "ok": ok, "error": err, "wall_s": time.perf_counter() - t0, "log": log}
    if os.path.isfile(stats):
        with open(stats) as f:
            res.update(json.load(f))
    return res


def line(r: Dict) -> str:
    step = f"{1000 * r['step_s']:.0f} ms/step" if r.get("step_s") else "- ms/step"
    mem = f"{r['peak_gb']:.2f} GB peak" if r.get("peak_gb") is not None else "- GB peak"
    status = "ok   " if r["ok"] else "ERROR"
    tail = "" if r["ok"] else f"  {r['error']}"
    return f"{status} {r['name']:<38} {step:>14} {mem:>14} {r['wall_s']:7.1f} s{tail}"


def main(argv: Optional[List[str]] = None) -> List[Dict]:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--child"]:
        child(argv[1], argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny sizes (the default without CUDA)")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per entry point (default 60 on CUDA, "
                                                                "300 tiny)")
    ap.add_argument("--only", default="", help="comma list of substrings: run the entries whose name matches")
    ap.add_argument("--work-dir", default=None, help="keep outputs and logs here (default: a temporary folder)")
    a = ap.parse_args(argv)
    import torch

    cuda = torch.cuda.is_available()
    tiny = a.tiny or not cuda
    gpus = torch.cuda.device_count() if cuda else 0
    timeout = a.timeout or (300.0 if tiny else 60.0)
    work = a.work_dir or tempfile.mkdtemp(prefix="gpu_check_")
    from core.data import write_imagefolder

    size = 32 if tiny else 256
    data = write_imagefolder(os.path.join(work, "imagefolder"), num_train=64 if tiny else 1280, num_val=16 if tiny
                             else 128, image_size=size)
    plan = Plan(tiny, gpus, work, data)
    dev = torch.cuda.get_device_name(0) + f" x {gpus}" if cuda else "cpu"
    print(f"gpu_check on {dev}: {'tiny' if tiny else 'R50 / ViT-S at 224 px'}, {plan.steps} steps per entry point, "
          f"outputs in {work}", flush=True)
    wanted = [s for s in a.only.split(",") if s]
    results = []
    t0 = time.perf_counter()
    for e in entries(plan):
        if wanted and not any(s in e["name"] for s in wanted):
            continue
        r = run_one(e, timeout, work)
        results.append(r)
        print(line(r), flush=True)
    bad = sum(not r["ok"] for r in results)
    print(f"{len(results) - bad}/{len(results)} ok in {time.perf_counter() - t0:.0f} s", flush=True)
    if bad and __name__ == "__main__":
        sys.exit(1)
    return results


if __name__ == "__main__":
    main()
