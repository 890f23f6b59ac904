"""Run a function on N CPU processes with gloo (for distributed-equivalence tests)."""
from __future__ import annotations

import os
import tempfile
from typing import Any, Callable, List

import torch
import torch.distributed as tdist


def _entry(rank: int, fn: Callable, world_size: int, port: int, folder: str, args: tuple) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        out = fn(rank, world_size, *args)
        torch.save(out, os.path.join(folder, f"{rank}.pt"))
    finally:
        tdist.destroy_process_group()
    from core.dist import exit_spawned_worker

    exit_spawned_worker()  # see its docstring: no interpreter teardown with gloo threads alive


def run_ranks(fn: Callable[..., Any], world_size: int = 2, *args) -> List[Any]:
    """Spawn ``world_size`` gloo processes running ``fn(rank, world_size, *args)`` (``fn`` must be importable
    at module level); return their results in rank order."""
    from core.dist import free_port

    with tempfile.TemporaryDirectory() as folder:
        torch.multiprocessing.spawn(_entry, nprocs=world_size, args=(fn, world_size, free_port(), folder, args))
        return [torch.load(os.path.join(folder, f"{r}.pt"), weights_only=False) for r in range(world_size)]
