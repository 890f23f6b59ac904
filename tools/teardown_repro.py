"""Reproducer of the gloo teardown abort (issue #16, item 1); not part of the test suite.

Each run spawns 2 fresh gloo processes with ``torch.multiprocessing.spawn`` (as ``core.dist.launch`` and
``core.dist.testing.run_ranks`` do) that do what the distributed tests do: the core losses on gathered
features (``all_gather_grad``: an all-gather whose backward is a gloo all-to-all issued from autograd) and
synchronised BN (all-reduces in forward and backward), then leave in one of three ways:

* ``destroy``: ``destroy_process_group()`` and a normal interpreter exit (the code before any workaround);
* ``exit``: ``destroy_process_group()`` then ``os._exit(0)`` (``core.dist.exit_spawned_worker``, the fix kept:
  no interpreter teardown);
* ``leave``: two barriers, then destroy, and a normal exit (a candidate fix, rejected: it aborted too).

A run fails when spawn reports a non-zero exit of either process (the abort is SIGABRT: "terminate called
without an active exception").

usage: python tools/teardown_repro.py MODE [RUNS]        (prints a line every 10 runs and every failure)
       REPRO_SLOW_THREADS=1 ...: gloo's threads at nice 19 (see _lower_other_threads)
"""
from __future__ import annotations

import os
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

MODES = ("destroy", "exit", "leave")


def _work(rank: int, world: int) -> None:
    import torch

    from core import dist as cdist
    from core.losses import barlow_twins_loss, nt_xent, vicreg_loss

    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(8, 6, generator=g, dtype=torch.float64), torch.randn(8, 6, generator=g, dtype=torch.float64)
    n = 8 // world
    for fn in (nt_xent, barlow_twins_loss, vicreg_loss):
        a = z1[rank * n:(rank + 1) * n].clone().requires_grad_()
        b = z2[rank * n:(rank + 1) * n].clone().requires_grad_()
        fn(a, b).backward()
    bn = cdist.convert_sync_bn(torch.nn.BatchNorm1d(6).double())
    x = z1[rank * n:(rank + 1) * n].clone().requires_grad_()
    (bn(x) * torch.arange(6, dtype=torch.float64)).sum().backward()


def _lower_other_threads() -> None:
    """Stress amplifier: give every thread but the main one (gloo's run-loop and transport threads among them)
    the lowest CPU priority, so that on a busy machine they finish their last work items late (a race, if there
    is one, between those threads and interpreter finalization becomes likelier)."""
    main = str(threading.get_native_id())
    for tid in os.listdir("/proc/self/task"):
        if tid != main:
            try:
                os.setpriority(os.PRIO_PROCESS, int(tid), 19)
            except OSError:
                pass


def _entry(rank: int, world: int, port: int, mode: str) -> None:
    import torch
    import torch.distributed as tdist

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", rank=rank, world_size=world)
    if os.environ.get("REPRO_SLOW_THREADS"):
        _lower_other_threads()
    _work(rank, world)
    if mode == "leave":  # the candidate fix that was measured and rejected: barriers, destroy, normal exit
        tdist.barrier()
        tdist.barrier()
        tdist.destroy_process_group()
        return
    tdist.destroy_process_group()
    if mode == "exit":
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def one_run(mode: str) -> str:
    """Spawn both ranks; return '' on success, else the error spawn raised (exit status / signal)."""
    import torch.multiprocessing as tmp

    from core.dist import free_port

    try:
        tmp.spawn(_entry, nprocs=2, args=(2, free_port(), mode))
    except Exception as e:  # ProcessExitedException: "process 1 terminated with signal SIGABRT"
        return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return ""


def main(argv) -> int:
    if not argv or argv[0] not in MODES:
        print(f"error: MODE must be one of {', '.join(MODES)}", file=sys.stderr)
        return 2
    mode, runs = argv[0], int(argv[1]) if len(argv) > 1 else 100
    failed, start = 0, time.time()
    for i in range(1, runs + 1):
        err = one_run(mode)
        if err:
            failed += 1
            print(f"run {i}: {err}", flush=True)
        if i % 10 == 0:
            print(f"{mode}: {failed}/{i} runs failed so far ({time.time() - start:.0f} s)", flush=True)
    print(f"{mode}: {failed}/{runs} runs failed ({time.time() - start:.0f} s)", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
