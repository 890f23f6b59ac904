"""2-process gloo: the RDM losses over the all-gathered batch give the same loss on every rank as one process
on the global batch, and the DDP-averaged parameter gradients equal the single-process gradients.

The features are full rank and well conditioned (input width K above every output width, checked by
:func:`test_test_data_is_full_rank_and_well_conditioned`): with a rank-deficient z, negative powers of the
round-off singular values (s ** (1 + sigma), sigma < 0) make the result depend on the summation order."""
import multiprocessing as mp
import os
import socket

import numpy as np
import pytest
import torch
import torch.nn as nn

from rdm_lib.losses import imagenet_cos_term, rdm_solo_loss

WORLD, N_LOCAL, K = 2, 8, 32
CONFIGS = [  # (variant, base, pred_type, location, sigma, out_dim)
    ("solo", "simsiam", "poly", "online", 1.0, 10),
    ("solo", "byol", "log_2", "target", -0.5, 10),
    ("imagenet", None, "log_1", "online", 0.0, 24),   # batch 16 < dim 24: SVD branch
    ("imagenet", None, "poly", "target", -1.0, 10),   # batch 16 >= dim 10: eigh branch
    ("imagenet", None, "poly", "online", 2.0, 10),
]


def loss_fn(cfg, p, z):
    variant, base, pred_type, location, sigma, _ = cfg
    if variant == "solo":
        return rdm_solo_loss(p, z, pred_type, location, sigma, base)
    return -imagenet_cos_term(p, z, pred_type, location, sigma)


def data():
    g = torch.Generator().manual_seed(123)
    return torch.randn(WORLD * N_LOCAL, K, generator=g), torch.randn(WORLD * N_LOCAL, K, generator=g)


def run_cfg(cfg, x, y):
    torch.manual_seed(0)
    lin = nn.Linear(K, cfg[-1])
    loss = loss_fn(cfg, lin(x), lin(y))
    loss.backward()
    return loss.item(), lin.weight.grad.clone(), lin.bias.grad.clone()


def worker(rank, port, q):
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        x, y = data()
        sl = slice(rank * N_LOCAL, (rank + 1) * N_LOCAL)
        out = []
        for cfg in CONFIGS:
            loss, gw, gb = run_cfg(cfg, x[sl], y[sl])
            for g in (gw, gb):  # what DDP does: mean of the per-rank gradients
                dist.all_reduce(g)
                g /= WORLD
            out.append((loss, gw.numpy(), gb.numpy()))
        q.put((rank, out))
    finally:
        dist.destroy_process_group()
    # a fork-context child: multiprocessing ends it with os._exit after this returns (no interpreter teardown)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_rank_results():
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=worker, args=(r, port, q)) for r in range(WORLD)]
    for p in procs:
        p.start()
    res = dict(q.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return res


@pytest.mark.parametrize("i", range(len(CONFIGS)))
def test_test_data_is_full_rank_and_well_conditioned(i):
    """Every p = lin(x), z = lin(y) of the configs has min(N, D) singular values within a factor 20."""
    x, y = data()
    torch.manual_seed(0)
    lin = nn.Linear(K, CONFIGS[i][-1])
    with torch.no_grad():
        for m in (lin(x), lin(y)):
            s = torch.linalg.svdvals(m.double())
            assert len(s) == min(m.shape) and s.min() > s.max() / 20, s


@pytest.mark.parametrize("i", range(len(CONFIGS)))
def test_two_ranks_equal_one_process_on_global_batch(two_rank_results, i):
    x, y = data()
    loss, gw, gb = run_cfg(CONFIGS[i], x, y)
    for rank in range(WORLD):
        l_r, gw_r, gb_r = two_rank_results[rank][i]
        assert l_r == pytest.approx(loss, abs=1e-5)
        np.testing.assert_allclose(gw_r, gw.numpy(), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(gb_r, gb.numpy(), rtol=1e-4, atol=1e-6)
