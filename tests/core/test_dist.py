"""Distributed equivalence on 2 gloo processes: gathered losses give the single-process loss and gradient
on the global batch; shuffle-BN restores the order; the launcher spawns CPU workers."""
import argparse
import os

import pytest
import torch

from core import dist
from core.dist.testing import run_ranks
from core.losses import barlow_twins_loss, nt_xent, vicreg_loss

LOSSES = {"nt_xent": lambda a, b: nt_xent(a, b, 0.2), "barlow": barlow_twins_loss, "vicreg": vicreg_loss}


def _global_batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(8, 6, generator=g, dtype=torch.float64), torch.randn(8, 6, generator=g, dtype=torch.float64)


def _rank_grads(rank, world):
    z1, z2 = _global_batch()
    n = z1.shape[0] // world
    out = {}
    for name, fn in LOSSES.items():
        a = z1[rank * n:(rank + 1) * n].clone().requires_grad_()
        b = z2[rank * n:(rank + 1) * n].clone().requires_grad_()
        loss = fn(a, b)
        loss.backward()
        # DDP averages parameter gradients over ranks; the inputs stand in for parameters here
        out[name] = (float(loss.detach()), a.grad / world, b.grad / world)
    out["bn"] = _bn_slice(rank, world)
    return out


def _bn_layer():
    return torch.nn.BatchNorm1d(6).double()


def _bn_slice(rank, world):
    """Synchronised BN (converted by core.dist.convert_sync_bn) on this rank's slice of the global batch."""
    z1, _ = _global_batch()
    n = z1.shape[0] // world
    bn = dist.convert_sync_bn(_bn_layer())
    x = z1[rank * n:(rank + 1) * n].clone().requires_grad_()
    y = bn(x)
    (y * torch.arange(6, dtype=torch.float64)).sum().backward()  # a loss that is a sum over rows
    return y.detach(), x.grad, bn.running_var.clone(), type(bn).__name__


@pytest.fixture(scope="module")
def rank_outputs():
    return run_ranks(_rank_grads, 2)


def test_gathered_losses_match_single_process(rank_outputs):
    outs = rank_outputs
    for name, fn in LOSSES.items():
        z1, z2 = _global_batch()
        a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
        ref = fn(a, b)
        ref.backward()
        losses = [o[name][0] for o in outs]
        if name == "vicreg":  # the invariance term is a per-rank mean (as the original), averaged by DDP
            assert abs(sum(losses) / 2 - float(ref.detach())) < 1e-10
        else:
            assert all(abs(v - float(ref.detach())) < 1e-10 for v in losses), name
        assert torch.allclose(torch.cat([o[name][1] for o in outs]), a.grad, atol=1e-12), name
        assert torch.allclose(torch.cat([o[name][2] for o in outs]), b.grad, atol=1e-12), name


def test_sync_bn_on_gloo_equals_bn_on_global_batch(rank_outputs):
    outs = rank_outputs
    z1, _ = _global_batch()
    x = z1.clone().requires_grad_()
    bn = _bn_layer()
    y = bn(x)
    (y * torch.arange(6, dtype=torch.float64)).sum().backward()
    assert all(o["bn"][3] == "GroupBatchNorm" for o in outs)
    assert torch.allclose(torch.cat([o["bn"][0] for o in outs]), y.detach(), atol=1e-12)
    assert torch.allclose(torch.cat([o["bn"][1] for o in outs]), x.grad, atol=1e-12)
    assert torch.allclose(outs[0]["bn"][2], bn.running_var, atol=1e-12)


def _shuffle_roundtrip(rank, world):
    x = torch.arange(4, dtype=torch.float32).view(4, 1) + 10 * rank
    g = torch.Generator().manual_seed(1)
    shuffled, idx = dist.batch_shuffle(x, generator=g)
    back = dist.batch_unshuffle(shuffled * 1.0, idx)
    return x, shuffled, back


def test_shuffle_bn_unshuffles_to_original_order():
    outs = run_ranks(_shuffle_roundtrip, 2)
    for x, shuffled, back in outs:
        assert torch.equal(x, back)
    allx = torch.cat([o[1] for o in outs]).flatten().tolist()
    assert sorted(allx) == [0, 1, 2, 3, 10, 11, 12, 13]  # a permutation of the global batch
    assert allx != [0, 1, 2, 3, 10, 11, 12, 13]


def _record(ctx, args):
    with open(os.path.join(args.out, f"rank{ctx.rank}"), "w") as f:
        f.write(f"{ctx.rank} {ctx.world_size} {dist.get_world_size()} {ctx.device.type}")


def test_launch_multiprocessing_distributed_with_gpus_list_on_cpu(tmp_path):
    p = argparse.ArgumentParser()
    dist.add_launch_args(p, gpus=True)
    args = p.parse_args(["--gpus", "0", "1", "--multiprocessing-distributed", "--world-size", "1", "--rank", "0",
                         "--dist-url", f"tcp://127.0.0.1:{dist.free_port()}"])
    args.out = str(tmp_path)
    dist.launch_from_args(_record, args)
    got = sorted(open(tmp_path / f).read() for f in os.listdir(tmp_path))
    assert got == ["0 2 2 cpu", "1 2 2 cpu"]


def test_single_process_is_plain():
    a = torch.randn(3, 2)
    assert dist.all_gather_grad(a) is a and dist.concat_all_gather(a) is a and dist.get_world_size() == 1
