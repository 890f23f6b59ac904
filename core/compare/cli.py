"""``python -m core.compare [--data synthetic|digits|DIR|cifar10:ROOT] [--seeds 0 1] [--only simclr byol] ...``

Trains each method of :data:`core.compare.methods.METHODS` through its paper script with one shared budget,
evaluates every backbone with :mod:`core.compare.protocol`, adds the random-init and raw-pixel baselines, and
writes ``results.md`` (printed too), ``results.csv``, ``results.json`` and ``results.png`` under ``--out``.
Rows already in ``--out`` with the same budget are reused (the run folder is the cache).
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import threading
import time
from typing import Dict, List

import torch

from core.compare import methods as M
from core.compare import protocol, report, runner
from core.data import is_builtin
from core.errors import UserError, cli_main


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m core.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="synthetic",
                   help="synthetic | digits | DIR with train/ and val/ (ImageFolder, ImageNet-100) | cifar10:ROOT")
    p.add_argument("--out", default=None, help="run folder (the cache); default compare_out/<data>")
    p.add_argument("--backbone", default="resnet_tiny")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=None, help="default: 2 (synthetic), 3 (digits), 100 (real data)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--only", nargs="+", default=None, help=f"methods: {' '.join(M.METHOD_KEYS)}")
    p.add_argument("--num-train", type=int, default=2000, help="train images of the synthetic set")
    p.add_argument("--num-val", type=int, default=1000, help="val images of the synthetic set")
    p.add_argument("--workers", type=int, default=0, help="loader workers of every script")
    p.add_argument("--stem", default=None, choices=("cifar", "imagenet"),
                   help="ResNet stem of every row (default: cifar at <= 64 px, else imagenet)")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                   help="scripts trained at the same time (default: 2 where the machine has 2 cores)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads of each script")
    p.add_argument("--max-steps", type=int, default=None, help="cap steps per epoch (smoke tests)")
    return p


DEFAULT_EPOCHS = {"synthetic": 2, "digits": 3}


def budget_from(args) -> M.Budget:
    for name in ("image_size", "batch_size", "num_train", "num_val", "threads", "jobs"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.epochs is not None and args.epochs < 1:
        raise UserError(f"--epochs must be positive, got {args.epochs}")
    if args.workers < 0:
        raise UserError(f"--workers must be >= 0, got {args.workers}")
    data = args.data.strip().lower() if is_builtin(args.data) else args.data
    epochs = args.epochs or DEFAULT_EPOCHS.get(data, 100)
    b = M.Budget(data=data, backbone=args.backbone, image_size=args.image_size, batch_size=args.batch_size,
                 epochs=epochs, seed=args.seeds[0], num_train=args.num_train, num_val=args.num_val,
                 workers=args.workers,
                 stem=args.stem or M.default_stem(args.image_size), max_steps=args.max_steps)
    M._width(b)
    if b.steps_per_epoch() < 1:
        raise UserError(f"--batch-size {b.batch_size} is larger than the train set ({b.train_size()} images)")
    return b


def setup_line(b: M.Budget, seeds) -> str:
    return (f"data {b.data} ({b.train_size()} train images), backbone {b.backbone} with the {b.stem.upper()} "
            f"stem, {b.image_size} px, batch {b.batch_size}, {b.epochs} epochs"
            + (f" (max {b.max_steps} steps each)" if b.max_steps else "") + f", seeds {' '.join(map(str, seeds))}")


def run_rows(chosen, base: M.Budget, seeds, out: str, jobs: int, threads: int) -> List[Dict]:
    """Every (method, seed) not in the cache is trained and then evaluated, ``jobs`` rows at a time (the
    evaluation is deterministic: fixed views, no shared random state); then the baselines. One progress line
    per row, in the order rows finish; the returned rows keep the table's order."""
    sets = protocol.datasets(base.data, base.image_size, base.num_train, base.seed, base.num_val)
    tasks = [(m, runner.with_seed(base, s)) for s in seeds for m in chosen]
    tasks += [(key, runner.with_seed(base, s)) for s in seeds for key, _, _ in runner.BASELINES]
    done: List[int] = []
    lock = threading.Lock()

    def one(i):
        m, b = tasks[i]
        t = time.time()
        if isinstance(m, str):
            r = runner.baseline_row(m, b, out, sets)
        else:
            r = runner.evaluate_row(m, b, out, runner.train_or_cached(m, b, out, threads), sets)
        with lock:
            done.append(i)
            progress(len(done), len(tasks), r, t)
        return r

    with cf.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return list(pool.map(one, range(len(tasks))))


def progress(i: int, n: int, r: Dict, t0: float) -> None:
    if "error" in r:
        tail = "FAILED: " + r["error"]
    else:
        took = "cached" if r.get("cached") else (f"trained {r['train_s']:.0f} s + evaluated {r['eval_s']:.0f} s"
                                                 if "train_s" in r else f"evaluated {r['eval_s']:.0f} s")
        tail = (f"kNN@20 {r['knn20']:.1f}, kNN@200 {r['knn200']:.1f}, linear {r['linear']:.1f}, eff. rank "
                f"{r['eff_rank']:.1f} ({took})")
    print(f"[{i}/{n}] {r['label']} seed {r['seed']}: {tail}", flush=True)


@cli_main
def main(argv=None) -> None:
    args = parser().parse_args(argv)
    chosen = M.select(args.only)
    base = budget_from(args)
    out = args.out or os.path.join("compare_out", base.data.replace(os.sep, "_").replace(":", "_"))
    os.makedirs(out, exist_ok=True)
    torch.set_num_threads(max(1, args.jobs * args.threads))
    t0 = time.time()
    print(setup_line(base, args.seeds) + f"; {args.jobs} script(s) at a time, {args.threads} thread(s) each",
          flush=True)
    rows = run_rows(chosen, base, args.seeds, out, args.jobs, args.threads)
    aggs = report.aggregate(rows)
    total = time.time() - t0
    header = {"setup": setup_line(base, args.seeds), "seconds": total, "out": out}
    text = "\n".join([f"{header['setup']}; total {total:.0f} s", "", report.markdown(aggs), "",
                      *report.learning_proxy(aggs)])
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(text + "\n")
    report.write_csv(os.path.join(out, "results.csv"), rows)
    report.write_json(os.path.join(out, "results.json"), rows, aggs, header)
    report.plot(os.path.join(out, "results.png"), aggs, header["setup"])
    print("\n" + text)
    print(f"\nwritten: {out}/results.md, results.csv, results.json, results.png")
    failed = [a["label"] for a in aggs if a["errors"]]
    if failed:
        raise UserError(f"{len(failed)} row(s) failed: {', '.join(failed)} (see their train.log)")


if __name__ == "__main__":
    main()
