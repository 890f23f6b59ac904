"""Two gloo processes: shuffle-BN un-shuffles to the original order across ranks, the queue holds the keys of
both ranks in rank order, and per-rank losses / DDP-averaged gradients equal the single-process computation
(the original optimises the mean over ranks of the per-rank losses; keys are shared through the queue)."""
import os
import types

import torch

from au_helpers import tiny
from au_lib.builder import MoCo
from core import dist as cdist

N, D_IN = 4, 12


def _data(rank):
    g = torch.Generator().manual_seed(100 + rank)
    return torch.randn(N, D_IN, generator=g), torch.randn(N, D_IN, generator=g)


def _model(bn):
    torch.manual_seed(0)
    return MoCo(tiny(bn), dim=8, K=16, m=0.9, contr_tau=0.2, align_alpha=2.0, unif_t=3.0,
                contr_w=1.0, align_w=3.0, unif_w=1.0)


def _worker(ctx, args):
    out = {}
    # 1. batch_shuffle / batch_unshuffle round trip with globally distinct rows
    x = torch.arange(N * 3, dtype=torch.float32).view(N, 3) + 100 * ctx.rank
    torch.manual_seed(7 + ctx.rank)  # different local RNGs: the permutation must come from rank 0
    xs, idx = cdist.batch_shuffle(x)
    out["shuffled"] = xs
    out["restored"] = cdist.batch_unshuffle(xs, idx)
    out["x"] = x
    # 2. MoCo step with a BN key encoder (shuffle-BN) under DDP: queue after enqueue
    model = _model(bn=True)
    ddp = cdist.wrap_ddp(model, ctx)
    x_q, x_k = _data(ctx.rank)
    loss, _ = ddp(([x_q, x_k], None))
    loss.backward()
    out["queue_bn"], out["k_bn"], out["ptr_bn"] = model.queue.clone(), model.last_qk[1], int(model.queue_ptr)
    # 3. no-BN model: per-rank loss and DDP-averaged gradients
    model = _model(bn=False)
    ddp = cdist.wrap_ddp(model, ctx)
    loss, _ = ddp(([x_q, x_k], None))
    loss.backward()
    out["loss"] = loss.detach()
    out["grads"] = {n: p.grad.clone() for n, p in model.encoder_q.named_parameters()}
    out["queue"] = model.queue.clone()
    torch.save(out, os.path.join(args.tmp, f"rank{ctx.rank}.pt"))


def test_two_process_shuffle_queue_and_gradients(tmp_path):
    args = types.SimpleNamespace(tmp=str(tmp_path))
    cdist.launch(_worker, args, multiprocessing_distributed=True, world_size=1, rank=0,
                 dist_url=f"tcp://127.0.0.1:{cdist.free_port()}", dist_backend="gloo", gpus=[0, 1])
    r = [torch.load(tmp_path / f"rank{i}.pt") for i in range(2)]
    # shuffle-BN: each rank restores exactly its own rows; the shuffled slices partition the global batch
    for i in range(2):
        torch.testing.assert_close(r[i]["restored"], r[i]["x"])
    glob = torch.cat([r[0]["x"], r[1]["x"]])
    mixed = torch.cat([r[0]["shuffled"], r[1]["shuffled"]])
    assert sorted(map(tuple, mixed.tolist())) == sorted(map(tuple, glob.tolist()))
    assert not torch.equal(mixed, glob)
    own0 = {tuple(v) for v in r[0]["x"].tolist()}
    assert any(tuple(v) not in own0 for v in r[0]["shuffled"].tolist())  # rows crossed ranks
    # queue: identical on both ranks, keys of rank 0 then rank 1 at columns [0, 8)
    for key, kkey in (("queue_bn", "k_bn"), ("queue", None)):
        torch.testing.assert_close(r[0][key], r[1][key])
    torch.testing.assert_close(r[0]["queue_bn"][:, :2 * N], torch.cat([r[0]["k_bn"], r[1]["k_bn"]]).T)
    assert r[0]["ptr_bn"] == r[1]["ptr_bn"] == 2 * N
    # single-process reference without BN: per-rank losses, mean of per-rank gradients, global-batch enqueue
    ref_losses, ref_grads, keys = [], [], []
    for rank in range(2):
        model = _model(bn=False)
        x_q, x_k = _data(rank)
        loss, _ = model(([x_q, x_k], None))
        loss.backward()
        ref_losses.append(loss.detach())
        ref_grads.append({n: p.grad for n, p in model.encoder_q.named_parameters()})
        keys.append(model.last_qk[1])
    for rank in range(2):
        torch.testing.assert_close(r[rank]["loss"], ref_losses[rank], rtol=1e-5, atol=1e-6)
    for n, g in r[0]["grads"].items():
        expected = (ref_grads[0][n] + ref_grads[1][n]) / 2
        torch.testing.assert_close(g, expected, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(r[1]["grads"][n], expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(r[0]["queue"][:, :2 * N], torch.cat(keys).T, rtol=1e-5, atol=1e-6)
