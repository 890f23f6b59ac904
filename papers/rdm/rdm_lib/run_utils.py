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


STRATEGIES = (None, "ddp", "ddp_spawn")  # one process per device, as our launcher runs it
ACCELERATORS = ("gpu", "cpu", "auto", "cuda")


def launch_solo(fn, args) -> None:
    """Lightning's launch for the solo scripts: ``--devices 0,1`` -> one process per device (gloo on CPU),
    ``--num_nodes`` > 1 under torchrun only, ``--accelerator cpu`` on the CPU even where CUDA is available."""
    from core.errors import UserError

    cfg = args if isinstance(args, dict) else vars(args)  # main_pretrain: its config dict; main_linear: flags
    if cfg["strategy"] not in STRATEGIES:
        raise UserError(f"--strategy {cfg['strategy']} is not supported here (one process per device: ddp)")
    if cfg["accelerator"] not in ACCELERATORS:
        raise UserError(f"--accelerator {cfg['accelerator']} is not supported here (gpu or cpu)")
    if cfg["num_nodes"] < 1:
        raise UserError(f"--num_nodes must be at least 1, got {cfg['num_nodes']}")
    if cfg["num_nodes"] != 1 and not dist.env_launched():
        raise UserError("--num_nodes > 1 needs torchrun (RANK/WORLD_SIZE in the environment)")
    devices = cfg["devices"]
    if not devices:
        raise UserError("--devices is empty (e.g. --devices 0 or 0,1)")
    backend = None
    if cfg["accelerator"] == "cpu":
        hide_cuda()
        fn, backend = on_cpu(fn), "gloo"
    gpus = devices if cfg["accelerator"] != "cpu" and torch.cuda.is_available() else None
    dist.launch(fn, args, multiprocessing_distributed=len(devices) > 1, world_size=1, rank=0, dist_url="env://",
                dist_backend=backend, gpus=gpus if gpus else (devices if len(devices) > 1 else None))
