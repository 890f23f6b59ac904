"""The original ``init_environ`` launcher choices on top of :mod:`core.dist`.

``pytorch``: RANK / WORLD_SIZE / LOCAL_RANK from ``torch.distributed.launch --use_env`` (core.dist reads them).
``slurm``: SLURM_PROCID / SLURM_NTASKS / SLURM_NODELIST -> the same variables, MASTER_ADDR = first host of
``scontrol show hostname``, MASTER_PORT = ``port``.
"""
from __future__ import annotations

import os
import subprocess

from core import dist
from core.errors import UserError


def per_rank_batch(total: int, ctx: dist.DistContext, what: str) -> int:
    """``total // world_size``, as the originals' ``int(batch / world_size)``; the not-divisible warning of
    :func:`core.dist.per_process_batch` comes once, from the main rank (every rank gets the error for 0)."""
    return dist.per_process_batch(total, ctx.world_size, what, warn=ctx.is_main)


def slurm_env(port: int) -> None:
    """Translate the SLURM variables into the torch.distributed env:// ones (original ``init_environ``)."""
    try:
        proc_id = int(os.environ["SLURM_PROCID"])
        ntasks = int(os.environ["SLURM_NTASKS"])
        node_list = os.environ["SLURM_NODELIST"]
    except KeyError as e:
        raise UserError(f"launcher 'slurm' needs the SLURM environment variable {e.args[0]}") from None
    try:
        out = subprocess.run(["scontrol", "show", "hostname", node_list], capture_output=True, text=True,
                             check=True).stdout
        addr = out.split()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        raise UserError(f"launcher 'slurm': cannot resolve the first host of '{node_list}' with scontrol") from None
    import torch

    ngpus = max(1, torch.cuda.device_count())
    os.environ.setdefault("MASTER_PORT", str(port))
    os.environ.setdefault("MASTER_ADDR", addr)
    os.environ["WORLD_SIZE"] = str(ntasks)
    os.environ["LOCAL_RANK"] = str(proc_id % ngpus)
    os.environ["RANK"] = str(proc_id)
