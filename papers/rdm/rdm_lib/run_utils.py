"""Small pieces shared by the four RDM entry points: the guard hint on a diverged run, and ``--accelerator cpu``."""
from __future__ import annotations

import contextlib
import os

import torch

from core import dist
from core.engine.trainer import TrainingDiverged

GUARD_HINT = ("the RDM filter is the original formula (no guard), which gives inf/NaN where a singular value is "
              "zero (log, negative powers, an eigh eigenvalue below 0); {flag} drops those directions")


@contextlib.contextmanager
def guard_hint(active: bool, flag: str):
    """Re-raise a :class:`TrainingDiverged` with one more clause naming ``flag`` (``--rdm-guard`` /
    ``--rdm_guard``) when the unguarded RDM filter is in use (``active``); the message stays one line."""
    try:
        yield
    except TrainingDiverged as e:
        if not active:
            raise
        raise TrainingDiverged(f"{str(e).rstrip('. ')}; {GUARD_HINT.format(flag=flag)}") from None


def hide_cuda() -> None:
    """``--accelerator cpu``: make CUDA invisible to this process and the processes it spawns (must run
    before the first CUDA call; :func:`on_cpu` covers a process where CUDA was already initialised)."""
    os.environ["CUDA_VISIBLE_DEVICES"] = ""


class on_cpu:
    """Wrap a per-process ``fn(ctx, args)`` so that it runs on the CPU whatever the launcher picked (Lightning
    ``--accelerator cpu``: the original trains on the CPU even where CUDA is available). Picklable for spawn."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, ctx, args):
        if ctx.device.type != "cpu":
            ctx = dist.DistContext(ctx.rank, ctx.local_rank, ctx.world_size, torch.device("cpu"))
        return self.fn(ctx, args)
