"""SyncBN on CPU/gloo for the detection backbone (core.dist.syncbn): 2 processes = one BatchNorm2d on the
global batch."""
import os

import torch
import torch.distributed as dist
import torch.nn as nn

from core.dist import exit_spawned_worker
from core.dist.syncbn import GroupBatchNorm, convert_group_bn

C = 3


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, C, 5, 6, generator=g) * 2 + 1
    w = torch.randn(4, C, 5, 6, generator=g)          # fixed per-element loss weights
    gamma, beta = torch.randn(C, generator=g), torch.randn(C, generator=g)
    return x, w, gamma, beta


def _worker(rank, world, init, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    x, w, gamma, beta = _data()
    bn = GroupBatchNorm(C, momentum=0.1)
    with torch.no_grad():
        bn.weight.copy_(gamma)
        bn.bias.copy_(beta)
    n = x.shape[0] // world
    xr = x[rank * n:(rank + 1) * n].clone().requires_grad_(True)
    y = bn(xr)
    (y * w[rank * n:(rank + 1) * n]).sum().backward()
    torch.save({"y": y.detach(), "gx": xr.grad, "gw": bn.weight.grad, "gb": bn.bias.grad,
                "rm": bn.running_mean, "rv": bn.running_var}, os.path.join(out_dir, f"r{rank}.pt"))
    dist.destroy_process_group()
    exit_spawned_worker()  # no interpreter teardown with gloo threads alive (see its docstring)


def test_global_bn_matches_single_process(tmp_path):
    world = 2
    init = f"file://{tmp_path}/rdv"
    torch.multiprocessing.spawn(_worker, args=(world, init, str(tmp_path)), nprocs=world)
    x, w, gamma, beta = _data()
    ref = nn.BatchNorm2d(C, momentum=0.1)
    with torch.no_grad():
        ref.weight.copy_(gamma)
        ref.bias.copy_(beta)
    xg = x.clone().requires_grad_(True)
    y = ref(xg)
    (y * w).sum().backward()
    parts = [torch.load(tmp_path / f"r{r}.pt") for r in range(world)]
    torch.testing.assert_close(torch.cat([p["y"] for p in parts]), y.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat([p["gx"] for p in parts]), xg.grad, atol=1e-5, rtol=1e-5)
    # parameter grads: each rank holds its local part; their sum (DDP: mean x world) is the global grad
    torch.testing.assert_close(parts[0]["gw"] + parts[1]["gw"], ref.weight.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(parts[0]["gb"] + parts[1]["gb"], ref.bias.grad, atol=1e-5, rtol=1e-5)
    for p in parts:  # running stats from the global batch (unbiased variance), identical on both ranks
        torch.testing.assert_close(p["rm"], ref.running_mean, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(p["rv"], ref.running_var, atol=1e-6, rtol=1e-5)


def test_single_process_and_conversion():
    x, w, gamma, beta = _data()
    bn = GroupBatchNorm(C)
    ref = nn.BatchNorm2d(C)
    torch.testing.assert_close(bn(x), ref(x))
    body = nn.Sequential(nn.Conv2d(3, C, 1), nn.BatchNorm2d(C), nn.Sequential(nn.BatchNorm2d(C)))
    body[1].weight.requires_grad_(False)
    body[1].eval()
    conv = convert_group_bn(body)
    assert isinstance(conv[1], GroupBatchNorm) and isinstance(conv[2][0], GroupBatchNorm)
    assert not conv[1].training and not conv[1].weight.requires_grad and conv[2][0].training
