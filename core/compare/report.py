"""Aggregate the per-seed rows (mean +- std) and write the markdown table, CSV, JSON and PNG chart."""
from __future__ import annotations

import csv
import json
import math
import os
from typing import Dict, List, Sequence

METRICS = ("knn20", "knn200", "linear", "eff_rank", "l2_std", "align", "uniform", "train_s", "img_s")
HEADER = ("method", "paper folder", "zero-init res.", "kNN@20", "kNN@200", "linear", "eff. rank", "feat. std", "align", "uniform",
          "train s", "img/s", "differs from the original (why)")
BASELINE_KEYS = ("random", "random_zero", "pixels")
DIGITS = {"knn20": 1, "knn200": 1, "linear": 1, "eff_rank": 1, "l2_std": 3, "align": 2, "uniform": 2,
          "train_s": 0, "img_s": 0}


def mean_std(values: Sequence[float]):
    """Mean and sample standard deviation (0 for a single value)."""
    n = len(values)
    m = sum(values) / n
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return m, sd


def aggregate(rows: List[Dict]) -> List[Dict]:
    """One entry per method key (in first-seen order): the metrics' mean and std over its seeds."""
    groups: Dict[str, List[Dict]] = {}
    for r in rows:
        groups.setdefault(r["key"], []).append(r)
    out = []
    for key, rs in groups.items():
        ok = [r for r in rs if "error" not in r]
        agg = {"key": key, "label": rs[0]["label"], "folder": rs[0]["folder"], "seeds": [r["seed"] for r in ok],
               "zero_init": rs[0].get("zero_init"),
               "changes": rs[0].get("changes", []), "errors": [r["error"] for r in rs if "error" in r]}
        for m in METRICS:
            vals = [r[m] for r in ok if m in r]
            if vals:
                agg[m], agg[m + "_std"] = mean_std(vals)
        out.append(agg)
    return out


def fmt(agg: Dict, m: str) -> str:
    if m not in agg:
        return "-"
    d = DIGITS[m]
    s = f"{agg[m]:.{d}f}"
    return s + (f" ± {agg[m + '_std']:.{d}f}" if len(agg["seeds"]) > 1 else "")


def changes_text(changes) -> str:
    return "; ".join(f"{what} ({why})" for what, why in changes) or "-"


def init_text(a: Dict) -> str:
    return {True: "yes", False: "no"}.get(a.get("zero_init"), "-")


def markdown(aggs: List[Dict]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for a in aggs:
        if a["errors"] and not a["seeds"]:
            cells = [a["label"], a["folder"], init_text(a), "failed: " + a["errors"][0].replace("|", "/")] + [""] * 9
        else:
            cells = [a["label"], a["folder"], init_text(a)] + [fmt(a, m) for m in METRICS] + [changes_text(a["changes"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def learning_proxy(aggs: List[Dict]) -> List[str]:
    """One line per method: does its kNN@20 beat the random-init backbone of the same init (zero-init residual
    or not)?"""
    refs = {a["zero_init"]: a for a in aggs if a["key"] in BASELINE_KEYS and a.get("zero_init") is not None
            and "knn20" in a}
    lines = []
    for a in aggs:
        ref = refs.get(a.get("zero_init"))
        if a["key"] in BASELINE_KEYS or "knn20" not in a or ref is None:
            continue
        d = a["knn20"] - ref["knn20"]
        lines.append(f"{a['label']}: kNN@20 {d:+.1f} vs {ref['label']} -> "
                     f"{'beats' if d > 0 else 'DOES NOT beat'} it")
    return lines


def write_csv(path: str, rows: List[Dict]) -> None:
    cols = ["key", "label", "folder", "seed", *METRICS, "eval_s", "error"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in cols})


def write_json(path: str, rows: List[Dict], aggs: List[Dict], header: Dict) -> None:
    with open(path, "w") as f:
        json.dump({"setup": header, "rows": rows, "aggregate": aggs}, f, indent=1, default=str)


def plot(path: str, aggs: List[Dict], title: str) -> None:
    """Horizontal bars of kNN@20 and linear probe (mean, std as error bars) per row."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [a for a in aggs if "knn20" in a]
    if not shown:
        return
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(shown) + 1.5))
    ys = list(range(len(shown)))
    for off, m, colour in ((-0.2, "knn20", "tab:blue"), (0.2, "linear", "tab:orange")):
        ax.barh([y + off for y in ys], [a.get(m, 0) for a in shown], height=0.38, xerr=[a.get(m + "_std", 0)
                for a in shown], color=colour, label={"knn20": "kNN@20", "linear": "linear probe"}[m])
    ax.set_yticks(ys, [a["label"] for a in shown])
    ax.invert_yaxis()
    ax.set_xlabel("top-1 (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
