"""Distributed helpers shared by every paper folder.

One launcher (:func:`launch`) accepts the three styles the original repositories use:

* ``torchrun`` / ``python -m torch.distributed.launch --use_env``: ``RANK``/``WORLD_SIZE`` in the
  environment, ``env://`` rendezvous;
* ``--multiprocessing-distributed --world-size N --rank R --dist-url URL`` (optionally ``--gpus 0 1 2 3``):
  one spawned worker per GPU of this node; the global world size is ``N * procs_per_node``;
* a single plain process (no process group at all).

CUDA uses NCCL; without CUDA the same flags run the same number of CPU processes on gloo
(``--gpus 0 1 2 3`` on a CPU machine means 4 gloo processes). Every helper below is a no-op on one process.

Gradient convention of :func:`all_gather_grad`: its backward *sums* the incoming gradient of every rank, so
with DDP (which averages parameter gradients over ranks) a loss computed on the gathered global batch gets
exactly the single-process gradient on the global batch.
"""
from __future__ import annotations

import argparse
import builtins
import datetime
import os
import sys
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.distributed as dist
import torch.nn as nn

from core.errors import UserError


@dataclass
class DistContext:
    """Where this process sits: rank, local rank, world size and its device."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def backend_for(device_type: str) -> str:
    return "nccl" if device_type == "cuda" else "gloo"


def procs_per_node(gpus: Optional[Sequence[int]] = None) -> int:
    """Processes to spawn on this node: the ``--gpus`` list, else every CUDA device, else
    ``SSL_CPU_PROCS`` (default 1) CPU processes."""
    if gpus:
        return len(gpus)
    if torch.cuda.is_available():
        return torch.cuda.device_count()
    return max(1, int(os.environ.get("SSL_CPU_PROCS", "1")))


def _pick_device(local_rank: int, gpus: Optional[Sequence[int]] = None) -> torch.device:
    if torch.cuda.is_available():
        index = gpus[local_rank] if gpus else local_rank
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")


def setup_for_distributed(is_master: bool) -> None:
    """Silence ``print`` on every rank but the main one (``print(..., force=True)`` still prints)."""
    builtin_print = getattr(builtins, "_ssl_original_print", builtins.print)
    builtins._ssl_original_print = builtin_print

    def rank_print(*args, **kwargs):
        force = kwargs.pop("force", False)
        if is_master or force:
            builtin_print(*args, **kwargs)

    builtins.print = rank_print


def _timeout() -> datetime.timedelta:
    """``SSL_DIST_TIMEOUT`` (seconds) when set, else PyTorch's default process-group timeout."""
    raw = os.environ.get("SSL_DIST_TIMEOUT", "")
    if raw:
        try:
            secs = float(raw)
        except ValueError:
            raise UserError(f"SSL_DIST_TIMEOUT must be a number of seconds, got '{raw}'") from None
        if secs <= 0:
            raise UserError(f"SSL_DIST_TIMEOUT must be positive, got '{raw}'")
        return datetime.timedelta(seconds=secs)
    from torch.distributed.constants import default_pg_timeout

    return default_pg_timeout


def _address(dist_url: str) -> str:
    if dist_url == "env://":
        return f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    return dist_url


def init_process_group(rank: int, world_size: int, dist_url: str = "env://",
                       backend: Optional[str] = None, device: Optional[torch.device] = None) -> None:
    """Join the group; NCCL is bound to this process's device (``device_id``) so that the first collective
    never guesses the GPU from the rank. Says at once what it waits for, and stops with a one-line error when
    the peers do not come within the timeout (``SSL_DIST_TIMEOUT`` seconds; PyTorch's default otherwise)."""
    device = device or torch.device("cpu")
    chosen = backend or backend_for(device.type)
    if device.type != "cuda" and chosen == "nccl":
        chosen = "gloo"  # the original flag says nccl; without CUDA gloo is the only choice
    timeout = _timeout()
    sys.stderr.write(f"rank {rank}: joining {world_size} processes at {_address(dist_url)} ({chosen}; "
                     f"timeout {int(timeout.total_seconds())} s, set SSL_DIST_TIMEOUT to change)\n")
    sys.stderr.flush()
    kwargs = {}
    if chosen == "nccl" and device.type == "cuda":
        kwargs["device_id"] = device
    try:
        dist.init_process_group(backend=chosen, init_method=dist_url, world_size=world_size, rank=rank,
                                timeout=timeout, **kwargs)
    except (RuntimeError, ValueError) as e:
        text = str(e).lower()
        if "timeout" in text or "timed out" in text:
            raise UserError(f"rank {rank}: the other processes of a {world_size}-process run did not join at "
                            f"{_address(dist_url)} within {int(timeout.total_seconds())} s") from None
        raise


def per_process_batch(global_batch: int, world_size: int, what: str = "--batch-size", warn: bool = True) -> int:
    """``global_batch // world_size`` as the originals compute it, with one warning line when the process
    count does not divide it (samples are dropped; ``warn=ctx.is_main`` prints it once per run) and a UserError
    on every rank when it is 0."""
    per = int(global_batch) // max(1, int(world_size))
    if per < 1:
        raise UserError(f"{what}={global_batch} is smaller than the {world_size} processes")
    if warn and per * world_size != global_batch:
        sys.stderr.write(f"warning: {what}={global_batch} is not divisible by {world_size} processes: each "
                         f"takes {per} (global batch {per * world_size}, as the original floors it)\n")
        sys.stderr.flush()
    return per


def env_launched() -> bool:
    """True under torchrun or ``torch.distributed.launch --use_env``."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _run(fn: Callable, args, rank: int, local_rank: int, world_size: int, dist_url: str,
         backend: Optional[str], gpus) -> None:
    """One process: pick its device, join the group (when there is more than one process), silence
    non-main prints, call ``fn`` and leave the group again."""
    device = _pick_device(local_rank, gpus)
    if world_size > 1:
        init_process_group(rank, world_size, dist_url, backend, device)
    setup_for_distributed(rank == 0)
    try:
        fn(DistContext(rank, local_rank, world_size, device), args)
    finally:
        if is_dist():
            dist.destroy_process_group()


def _worker(local_rank: int, fn: Callable, args, node_rank: int, nprocs: int, world_size: int,
            dist_url: str, backend: Optional[str], gpus) -> None:
    """Entry of a spawned process: its global rank is ``node_rank * nprocs + local_rank``."""
    _run(fn, args, node_rank * nprocs + local_rank, local_rank, world_size, dist_url, backend, gpus)
    exit_spawned_worker()


def exit_spawned_worker(code: int = 0) -> None:
    """End a spawned worker that finished cleanly, without interpreter teardown.

    After ``destroy_process_group`` gloo's threads can still be alive while the interpreter finalizes; the
    process then aborts ("terminate called without an active exception", SIGABRT) although its work is done,
    and ``torch.multiprocessing.spawn`` reports a failure. Two barriers before the destroy do not prevent it
    (``tools/teardown_repro.py leave`` with gloo's threads at low priority aborted too). A worker that has returned has nothing left to run at exit (its results are on disk, logs flushed here), so
    it leaves with ``os._exit``. Errors still propagate normally, before this is reached. Used by
    :func:`launch`'s spawned workers, :func:`core.dist.testing.run_ranks` and the tests' own workers.
    """
    import sys as _sys

    for stream in (_sys.stdout, _sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(code)


def launch(fn: Callable[[DistContext, object], None], args, *, multiprocessing_distributed: bool = False,
           world_size: int = 1, rank: int = 0, dist_url: str = "env://", dist_backend: Optional[str] = None,
           gpus: Optional[Sequence[int]] = None) -> None:
    """Run ``fn(ctx, args)`` in the launch style the flags describe (see module docstring).

    ``world_size``/``rank`` are the node count and node rank with ``--multiprocessing-distributed`` (as in
    the MoCo/SimSiam scripts), and the process count and rank otherwise.
    """
    if env_launched():
        grank = int(os.environ["RANK"])
        _run(fn, args, grank, int(os.environ.get("LOCAL_RANK", grank)), int(os.environ["WORLD_SIZE"]),
             "env://", dist_backend, gpus)
    elif multiprocessing_distributed:
        nprocs = procs_per_node(gpus)
        total = nprocs * max(1, world_size)
        if dist_url == "env://":
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(free_port()))
        if total == 1:
            _run(fn, args, rank, 0, 1, dist_url, dist_backend, gpus)  # in this process: no spawn, no exit
        else:
            torch.multiprocessing.spawn(_worker, nprocs=nprocs,
                                        args=(fn, args, rank, nprocs, total, dist_url, dist_backend, gpus))
    else:
        # a single plain process, or explicit --world-size/--rank with one process per invocation
        _run(fn, args, rank if world_size > 1 else 0, 0, max(1, world_size), dist_url, dist_backend, gpus)


def free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------------------- collectives
def all_gather_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0, keeping the autograd graph.

    Backward sums the gradient from all ranks (``torch.distributed.nn.all_gather``); see the module docstring.
    """
    if not is_dist() or get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=0)


@torch.no_grad()
def concat_all_gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0, without gradient (MoCo's ``concat_all_gather``)."""
    if not is_dist() or get_world_size() == 1:
        return x
    out = [torch.empty_like(x) for _ in range(get_world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out, dim=0)


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over ranks, no gradient (in place on a clone)."""
    if not is_dist() or get_world_size() == 1:
        return x
    y = x.detach().clone()
    dist.all_reduce(y)
    return y / get_world_size()


@torch.no_grad()
def batch_shuffle(x: torch.Tensor, generator: Optional[torch.Generator] = None):
    """Shuffle-BN, step 1: gather the batch from every rank, permute it globally, return this rank's slice
    and the index needed to undo it. On one process this is a per-process shuffle."""
    local = x.shape[0]
    xs = concat_all_gather(x)
    total = xs.shape[0]
    perm = torch.randperm(total, generator=generator, device="cpu").to(x.device)
    if is_dist() and get_world_size() > 1:
        dist.broadcast(perm, src=0)
    unshuffle = torch.argsort(perm)
    r = get_rank()
    this = perm.view(-1, local)[r] if total > local else perm
    return xs[this], unshuffle


@torch.no_grad()
def batch_unshuffle(x: torch.Tensor, unshuffle: torch.Tensor) -> torch.Tensor:
    """Shuffle-BN, step 2: put this rank's outputs back in the original order of its own samples."""
    local = x.shape[0]
    xs = concat_all_gather(x)
    r = get_rank()
    idx = unshuffle.view(-1, local)[r] if xs.shape[0] > local else unshuffle
    return xs[idx]


def convert_sync_bn(model: nn.Module, group=None, device_type: Optional[str] = None) -> nn.Module:
    """Synchronised BN when a process group is up: ``nn.SyncBatchNorm`` on CUDA, the equivalent
    :class:`core.dist.syncbn.GroupBatchNorm` on CPU (gloo); the model unchanged on one process.
    ``device_type`` says where the model will run (default: where its parameters are now)."""
    if not (is_dist() and get_world_size() > 1):
        return model
    if device_type is None:
        device_type = "cuda" if any(p.is_cuda for p in model.parameters()) else "cpu"
    if device_type == "cuda":
        return _convert_cuda_bn(model, group)
    from core.dist.syncbn import convert_group_bn

    return convert_group_bn(model, group)


def _convert_cuda_bn(module: nn.Module, group=None) -> nn.Module:
    """``nn.SyncBatchNorm.convert_sync_batchnorm`` for the plain BN layers only: a layer that is already
    synchronised (``nn.SyncBatchNorm`` or ``GroupBatchNorm``, e.g. TWIST's logit BN over its bunch group) keeps
    its object and process group. Parameter objects are kept (torch's conversion reuses them)."""
    from core.dist.syncbn import GroupBatchNorm

    if isinstance(module, (nn.SyncBatchNorm, GroupBatchNorm)):
        return module
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return nn.SyncBatchNorm.convert_sync_batchnorm(module, process_group=group)
    for name, child in module.named_children():
        module.add_module(name, _convert_cuda_bn(child, group))
    return module


def wrap_ddp(model: nn.Module, ctx: DistContext, find_unused_parameters: bool = False) -> nn.Module:
    if not ctx.distributed:
        return model
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids,
                                               find_unused_parameters=find_unused_parameters)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(
        model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


def barrier() -> None:
    if is_dist():
        dist.barrier()


def add_launch_args(parser, *, gpus: bool = False) -> None:
    """The launch flags of the MoCo/SimSiam family (``--world-size --rank --dist-url --dist-backend
    --multiprocessing-distributed --gpu``), plus ``--local_rank`` for ``torch.distributed.launch``."""
    parser.add_argument("--world-size", default=-1, type=int, help="number of nodes for distributed training")
    parser.add_argument("--rank", default=-1, type=int, help="node rank for distributed training")
    parser.add_argument("--dist-url", default="tcp://224.66.41.62:23456", type=str,
                        help="url used to set up distributed training")
    parser.add_argument("--dist-backend", default="nccl", type=str, help="distributed backend")
    parser.add_argument("--multiprocessing-distributed", action="store_true",
                        help="spawn one process per GPU (per CPU process without CUDA)")
    parser.add_argument("--local_rank", "--local-rank", default=None, type=int, help=argparse.SUPPRESS)
    if gpus:
        parser.add_argument("--gpus", nargs="*", type=int, default=None, help="GPU ids to use")
    else:
        parser.add_argument("--gpu", default=None, type=int, help="GPU id to use.")


def launch_from_args(fn: Callable, args) -> None:
    """:func:`launch` driven by the flags of :func:`add_launch_args`."""
    world = args.world_size if args.world_size and args.world_size > 0 else 1
    rank = args.rank if args.rank and args.rank > 0 else 0
    gpus = getattr(args, "gpus", None)
    if gpus is None and getattr(args, "gpu", None) is not None and torch.cuda.is_available():
        gpus = [args.gpu]
    launch(fn, args, multiprocessing_distributed=args.multiprocessing_distributed, world_size=world,
           rank=rank, dist_url=args.dist_url, dist_backend=args.dist_backend, gpus=gpus)
