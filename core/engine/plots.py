"""PNG plots of training curves (matplotlib, headless)."""
from __future__ import annotations

import math
from typing import Dict, List, Sequence, Tuple


def plot_curves(step_losses: Sequence[Tuple[int, float]], history: List[Dict], path: str,
                title: str = "training curves") -> str:
    """Loss per logged step, plus every numeric per-epoch metric of ``history``, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({k for h in history for k, v in h.items()
                   if k != "epoch" and isinstance(v, (int, float)) and math.isfinite(v)})
    panels = 1 + len(keys)
    cols = min(3, panels)
    rows = math.ceil(panels / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    ax = axes[0][0]
    if step_losses:
        s, l = zip(*step_losses)
        ax.plot(s, l)
    ax.set_title("loss (per logged step)")
    ax.set_xlabel("step")
    for i, k in enumerate(keys, start=1):
        a = axes[i // cols][i % cols]
        pts = [(h["epoch"], h[k]) for h in history if k in h]
        a.plot([p[0] for p in pts], [p[1] for p in pts], marker="o")
        a.set_title(k)
        a.set_xlabel("epoch")
    for j in range(panels, rows * cols):
        axes[j // cols][j % cols].axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
