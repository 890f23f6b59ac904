"""Process set-up shared by main_moco.py and main_lincls.py (``main()`` of the originals), on top of
:func:`core.dist.launch`.

* ``--gpus`` lists this node's devices (default: all visible). Without CUDA the list is the number of CPU
  processes on gloo (``--gpus 0 1 2 3`` -> 4 processes); with neither, ``SSL_CPU_PROCS`` or 1.
* With ``--multiprocessing-distributed`` the batch and the workers are divided over this node's processes
  (workers ``ceil(workers / n)``); world size = nodes x n. main_moco asserts that ``n`` divides the batch
  (a one-line error here); main_lincls floors it (one warning line here, ``core.dist.per_process_batch``).
* cudnn ``deterministic`` and ``benchmark`` are both set in every worker whatever ``--seed`` is, as the fork
  does (Facebook's MoCo sets ``deterministic`` only with ``--seed``).
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


def prepare(args, floor_batch: bool = False) -> int:
    """Validate and divide ``batch_size`` / ``workers`` per process; seed the launcher. Returns procs per node.
    ``floor_batch``: floor a batch that the processes do not divide (main_lincls) instead of the error of
    main_moco's assert."""
    for name in ("epochs", "batch_size"):
        if getattr(args, name) <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    for name in ("workers", "start_epoch"):
        if getattr(args, name) < 0:
            raise UserError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.print_freq < 1:
        raise UserError(f"--print-freq must be positive, got {args.print_freq}")
    for name in ("max_steps", "num_samples", "image_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    if args.gpus is not None and len(set(args.gpus)) != len(args.gpus):
        raise UserError(f"--gpus lists a device twice: {args.gpus}")
    if torch.cuda.is_available() and args.gpus:
        bad = [g for g in args.gpus if not 0 <= g < torch.cuda.device_count()]
        if bad:
            raise UserError(f"--gpus {bad} not available ({torch.cuda.device_count()} visible CUDA devices)")
    nprocs = procs_for(args)
    if args.seed is not None:  # the fork seeds the launcher too, without MoCo's cudnn warning (see worker_setup)
        random.seed(args.seed)
        torch.manual_seed(args.seed)
    args.procs_per_node = nprocs
    if args.multiprocessing_distributed and nprocs == 1:
        warnings.warn("--multiprocessing-distributed with a single device: one process is started")
    if args.multiprocessing_distributed:
        if floor_batch:
            args.batch_size = cdist.per_process_batch(args.batch_size, nprocs, "--batch-size")
        elif args.batch_size % nprocs != 0:
            raise UserError(f"--batch-size {args.batch_size} is not divisible by the {nprocs} processes of this "
                            f"node")
        else:
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
    """Per-process seeding (seed + global rank) and the cudnn flags that the fork (``main_worker`` of
    SsnL/moco_align_uniform, both scripts) sets unconditionally: deterministic and benchmark."""
    if args.seed is not None:
        from core.data import seed_everything

        seed_everything(args.seed, ctx.rank)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = True
