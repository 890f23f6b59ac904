"""Train one row through its paper script (subprocess), evaluate it, cache the result in its run folder.

``<out>/<method>/seed<s>/``: ``train.log`` (the script's output), the script's own outputs and checkpoints, and
``result.json``. A folder whose ``result.json`` holds the same budget is reused as it is (the cache); any other
content is removed before the row is trained again.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import time
from typing import Dict, Optional

from core.compare.methods import Budget, Method
from core.compare import protocol
from core.errors import UserError

# key, label, zero-init residual (None: no network)
BASELINES = (("random", "random init", False), ("random_zero", "random init, zero-init residual", True),
             ("pixels", "raw pixels", None))


def result_path(out: str, key: str, seed: int) -> str:
    return os.path.join(out, key, f"seed{seed}", "result.json")


def cached(out: str, key: str, budget: Budget) -> Optional[Dict]:
    p = result_path(out, key, budget.seed)
    if not os.path.isfile(p):
        return None
    try:
        with open(p) as f:
            res = json.load(f)
    except (OSError, ValueError):
        return None
    return res if res.get("budget") == budget.fingerprint() and "error" not in res else None


def write_result(out: str, key: str, budget: Budget, res: Dict) -> Dict:
    res = {**res, "budget": budget.fingerprint()}
    p = result_path(out, key, budget.seed)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p + ".tmp", "w") as f:
        json.dump(res, f, indent=1)
    os.replace(p + ".tmp", p)
    return res


def fresh_dir(out: str, key: str, seed: int) -> str:
    d = os.path.abspath(os.path.join(out, key, f"seed{seed}"))
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)
    return d


def train_row(method: Method, budget: Budget, out: str, threads: int) -> Dict:
    """Run the method's script; returns timings, or ``error`` with the log's last line."""
    run = fresh_dir(out, method.key, budget.seed)
    cmd = method.build(budget, run)
    env = {**os.environ, **cmd.env, "SSL_RESNET_STEM": budget.stem, "OMP_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads)}
    log = os.path.join(run, "train.log")
    with open(log, "w") as f:
        f.write("$ (cd " + cmd.cwd + " && " + " ".join(f"{k}='{v}'" for k, v in cmd.env.items()) + " "
                + " ".join(cmd.argv) + ")\n")
        f.flush()
        t0 = time.time()
        rc = subprocess.run(cmd.argv, cwd=cmd.cwd, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
        secs = time.time() - t0
    images = budget.epochs * budget.steps_per_epoch() * budget.batch_size
    res = {"train_s": secs, "images": images, "img_s": engine_img_s(log) or images / max(secs, 1e-9),
           "changes": cmd.changes,
           "command": cmd.argv, "cwd": cmd.cwd, "env": cmd.env, "log": log}
    if rc != 0:
        res["error"] = f"exit status {rc}: {last_line(log)} (log: {log})"
    return res


def engine_img_s(log: str) -> Optional[float]:
    """The last images/s the engine's progress bar printed (training steps only, no start-up)."""
    with open(log, errors="replace") as f:
        found = re.findall(r"img/s=([0-9.]+)", f.read())
    return float(found[-1]) if found else None


def last_line(path: str) -> str:
    with open(path, errors="replace") as f:
        lines = [ln.strip() for ln in f.read().replace("\r", "\n").splitlines() if ln.strip()]
    return lines[-1][:200] if lines else "(empty log)"


def train_or_cached(method: Method, budget: Budget, out: str, threads: int) -> Dict:
    """Phase 1 (may run in parallel with other rows): the cached result, or a fresh training run."""
    hit = cached(out, method.key, budget)
    if hit is not None:
        return {**hit, "cached": True}
    res = train_row(method, budget, out, threads)
    res.update(key=method.key, label=method.label, folder=method.folder, seed=budget.seed,
               zero_init=method.zero_init)
    return res


def evaluate_row(method: Method, budget: Budget, out: str, res: Dict, sets) -> Dict:
    """Phase 2 (one row at a time, deterministic): load the backbone from the checkpoint and evaluate it."""
    if res.get("cached") or "error" in res:
        return res
    ckpt = method.checkpoint(os.path.join(os.path.abspath(out), method.key, f"seed{budget.seed}"))
    try:
        net = protocol.make_backbone(budget.backbone, budget.stem, budget.seed, ckpt, method.prefix,
                                     method.zero_init)
    except UserError as e:
        return {**res, "error": f"checkpoint {ckpt}: {e}"}
    t0 = time.time()
    res.update(protocol.evaluate(net, budget.data, budget.image_size, budget.num_train, seed=budget.seed,
                                 sets=sets))
    res["eval_s"] = time.time() - t0
    return write_result(out, method.key, budget, res)


def baseline_row(key: str, budget: Budget, out: str, sets) -> Dict:
    hit = cached(out, key, budget)
    if hit is not None:
        return {**hit, "cached": True}
    label, zero = {k: (lab, z) for k, lab, z in BASELINES}[key]
    net = (protocol.Pixels() if zero is None
           else protocol.make_backbone(budget.backbone, budget.stem, budget.seed, zero_init=zero))
    t0 = time.time()
    res = {"key": key, "label": label, "folder": "-", "seed": budget.seed, "zero_init": zero,
           **protocol.evaluate(net, budget.data, budget.image_size, budget.num_train, seed=budget.seed, sets=sets)}
    res["eval_s"] = time.time() - t0
    res["changes"] = []
    return write_result(out, key, budget, res)


def with_seed(budget: Budget, seed: int) -> Budget:
    return dataclasses.replace(budget, seed=seed)
