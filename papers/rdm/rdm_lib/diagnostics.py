"""The paper's subject made visible: effective rank of the online and the target outputs, every epoch.

After each optimizer step the method's ``last_outputs`` (online output p' and target output z' of its first
loss term, after the RDM filter when there is one; predictor output and stop-gradient target for the
baselines) are kept on the device, up to ``max_rows`` rows (the most recent steps). At the end of the epoch
the main process computes, with :func:`core.eval.effective_rank` (Roy & Vetterli: ``exp H(s/||s||_1)`` of the
singular values of the centred output matrix)::

    erank_online, erank_target, rank_differential = erank_target - erank_online

and writes ``spectra.png``: the normalised eigenvalue spectra (``s^2 / sum s^2``) of both outputs at the
last epoch, and the two effective ranks per epoch.
"""
from __future__ import annotations

import collections
import math
import os
from typing import Callable, Dict, List

import torch

from core.eval import effective_rank, singular_values


class RankMonitor:
    def __init__(self, get_model: Callable, output_dir: str, is_main: bool, max_rows: int = 2048,
                 title: str = ""):
        self.get_model, self.output_dir, self.is_main = get_model, output_dir, is_main
        self.max_rows, self.title = max_rows, title
        self.buf: collections.deque = collections.deque()
        self.rows = 0
        self.history: List[Dict[str, float]] = []

    def after_step(self, step: int = 0, total: int = 0) -> None:
        out = getattr(self.get_model(), "last_outputs", None)
        if out is None or not self.is_main:
            return
        p, z = (t.detach().float().reshape(t.shape[0], -1) for t in out)
        self.buf.append((p, z))
        self.rows += p.shape[0]
        while len(self.buf) > 1 and self.rows - self.buf[0][0].shape[0] >= self.max_rows:
            self.rows -= self.buf.popleft()[0].shape[0]

    def end_epoch(self, epoch: int) -> Dict[str, float]:
        if not self.is_main or not self.buf:
            return {}
        p = torch.cat([b[0] for b in self.buf])
        z = torch.cat([b[1] for b in self.buf])
        self.buf.clear()
        self.rows = 0
        eo, et = effective_rank(p), effective_rank(z)
        stats = {"erank_online": eo, "erank_target": et, "rank_differential": et - eo}
        self.history.append({"epoch": epoch, **stats})
        if all(math.isfinite(v) for v in stats.values()):
            self.plot(singular_values(p), singular_values(z), epoch)
        return stats

    def plot(self, s_online: torch.Tensor, s_target: torch.Tensor, epoch: int) -> str:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
        for s, name in ((s_online, "online"), (s_target, "target")):
            lam = (s ** 2) / (s ** 2).sum().clamp_min(1e-30)
            lam = lam[lam > 1e-12].numpy()  # below: round-off of numerically null directions
            a.semilogy(range(1, len(lam) + 1), lam, label=name)
        a.set_xlabel("index")
        a.set_ylabel("normalised eigenvalue")
        a.set_title(f"output spectra, epoch {epoch}")
        a.legend()
        ep = [h["epoch"] for h in self.history]
        b.plot(ep, [h["erank_online"] for h in self.history], "o-", label="online")
        b.plot(ep, [h["erank_target"] for h in self.history], "s-", label="target")
        b.set_xlabel("epoch")
        b.set_ylabel("effective rank")
        b.set_title("rank differential = target - online")
        b.legend()
        if self.title:
            fig.suptitle(self.title)
        fig.tight_layout()
        os.makedirs(self.output_dir, exist_ok=True)
        path = os.path.join(self.output_dir, "spectra.png")
        fig.savefig(path, dpi=80)
        plt.close(fig)
        return path
