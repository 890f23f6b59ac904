"""Process set-up shared by main_moco.py and main_lincls.py (``main()`` of the originals), on top of
:func:`core.dist.launch`.

* ``--gpus`` lists this node's devices (default: all visible). Without CUDA the list is the number of CPU
  processes on gloo (``--gpus 0 1 2 3`` -> 4 processes); with neither, ``SSL_CPU_PROCS`` or 1.
* With ``--multiprocessing-distributed`` the batch and the workers are divided over this node's processes
  (``batch_size / n`` must be an integer; workers ``ceil(workers / n)``); world size = nodes x n.
* Where the original refuses to run (no DDP: one GPU or CPU) one plain process runs instead.
"""
from __future__ import annotations

import math
import random
import warnings

import torch

from core import dist as cdist
from core.errors import UserError


def procs_for(args) -> int:
    if args.gpus is None and torch.cuda.is_available():
        args.gpus = list(range(torch.cuda.device_count()))
    return cdist.procs_per_node(args.gpus)


def prepare(args) -> int:
    """Validate and divide ``batch_size`` / ``workers`` per process; seed the launcher. Returns procs per node."""
    for name in ("epochs", "batch_size"):
        if getattr(args, name) <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.workers < 0:
        raise UserError(f"--workers must be >= 0, got {args.workers}")
    if args.gpus is not None and len(set(args.gpus)) != len(args.gpus):
        raise UserError(f"--gpus lists a device twice: {args.gpus}")
    if torch.cuda.is_available() and args.gpus:
        bad = [g for g in args.gpus if not 0 <= g < torch.cuda.device_count()]
        if bad:
            raise UserError(f"--gpus {bad} not available ({torch.cuda.device_count()} visible CUDA devices)")
    nprocs = procs_for(args)
    if args.seed is not None:
        random.seed(args.seed)
        torch.manual_seed(args.seed)
        warnings.warn("You have chosen to seed training. This will turn on the CUDNN deterministic setting, "
                      "which can slow down your training considerably!")
    args.procs_per_node = nprocs
    if args.multiprocessing_distributed and nprocs == 1:
        warnings.warn("--multiprocessing-distributed with a single device: one process is started")
    if args.multiprocessing_distributed:
        if args.batch_size % nprocs != 0:
            raise UserError(f"--batch-size {args.batch_size} is not divisible by the {nprocs} processes of this "
                            f"node")
        args.batch_size = args.batch_size // nprocs
        args.workers = int(math.ceil(args.workers / nprocs))
    args.nodes = args.world_size if args.world_size > 0 else 1
    return nprocs


def global_batch(args) -> int:
    """Batch over all processes of all nodes (after :func:`prepare`)."""
    per_node = args.procs_per_node if args.multiprocessing_distributed else 1
    return args.batch_size * per_node * args.nodes


def run(worker, args) -> None:
    """Start ``worker(ctx, args)`` in the launch style the flags describe."""
    cdist.launch(worker, args, multiprocessing_distributed=args.multiprocessing_distributed,
                 world_size=args.nodes, rank=max(args.rank, 0), dist_url=args.dist_url,
                 dist_backend=args.dist_backend, gpus=args.gpus)


def worker_setup(ctx, args) -> None:
    """Per-process seeding (seed + global rank) and the cudnn flags the original sets unconditionally."""
    if args.seed is not None:
        from core.data import seed_everything

        seed_everything(args.seed, ctx.rank)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = True
