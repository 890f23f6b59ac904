"""Worker functions for the 2-process gloo tests of tests/twist (spawned with torch.multiprocessing)."""
import os
from types import SimpleNamespace

import torch
import torch.distributed as tdist

B, C = 3, 5  # per-rank rows and features of the BN test


def bn_inputs(world):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(world * B, C, generator=g, dtype=torch.float64) * 2 + 1
    w = torch.randn(world * B, C, generator=g, dtype=torch.float64)
    return x, w


def model_args(**kw):
    a = dict(backbone="resnet_tiny", drop_path=0.0, img_size=16, patch_size=16, freeze_embedding=0,
             hid_dim=8, dim=6, proj_norm="bn", act="relu", drop=0.0, lbn_type="bn", proj_trunc_init=0,
             batch_size=2, bunch_size=4)
    a.update(kw)
    return SimpleNamespace(**a)


def model_inputs(world, per_rank=2, n_local=2):
    g = torch.Generator().manual_seed(1)
    n = world * per_rank
    torch.set_default_dtype(torch.float64)
    crops = [torch.randn(n, 3, 16, 16, generator=g) for _ in range(2)]
    crops += [torch.randn(n, 3, 8, 8, generator=g) for _ in range(n_local)]
    labels = torch.arange(n) % 3
    return crops, labels


def run(rank, world, port, out):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    tdist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        res = {"bn": _bn(rank, world), "model": _model(rank, world)}
        torch.save(res, os.path.join(out, f"rank{rank}.pt"))
    finally:
        tdist.destroy_process_group()
    from core.dist import exit_spawned_worker

    exit_spawned_worker()  # no interpreter teardown with gloo threads alive (see its docstring)


def _bn(rank, world):
    from core.dist.syncbn import GroupBatchNorm
    from twist_lib.head import make_bunch_group

    x, w = bn_inputs(world)
    res = {}
    for name, bunch in (("pair", 2 * B), ("single", B)):
        group = make_bunch_group(world, rank, B, bunch)
        bn = GroupBatchNorm(C, affine=False, process_group=group)
        xr = x[rank * B:(rank + 1) * B].clone().requires_grad_(True)
        y = bn(xr)
        (y * w[rank * B:(rank + 1) * B]).sum().backward()
        res[name] = {"y": y.detach(), "grad": xr.grad, "rm": bn.running_mean.clone(), "rv": bn.running_var.clone()}
    return res


def _model(rank, world):
    from core import dist
    from twist_lib.builder import build_twist
    from twist_lib.head import make_bunch_group
    from twist_lib.model import TwistMethod

    crops, labels = model_inputs(world)
    per = crops[0].shape[0] // world
    mine = [c[rank * per:(rank + 1) * per] for c in crops]
    res = {}
    for mode in ("twist", "teacher", "selflabel"):
        args = model_args()
        group = make_bunch_group(world, rank, args.batch_size, args.bunch_size)
        torch.manual_seed(0)
        model = build_twist(args, "cpu", group, distributed=True)
        teacher = None
        if mode == "teacher":
            torch.manual_seed(5)
            teacher = build_twist(args, "cpu", group, distributed=True)
            for p in teacher.parameters():
                p.requires_grad = False
        method = TwistMethod(lam1=-0.6 if mode == "teacher" else 0.0, mme_epochs=1, teacher=teacher)
        method.epoch = 1 if mode == "selflabel" else 0
        method.quantile = 0.5
        model.attach(method)
        ddp = dist.wrap_ddp(model, dist.DistContext(rank, rank, world))
        loss, logs = ddp((mine, labels[rank * per:(rank + 1) * per]))
        loss.backward()
        res[mode] = {"loss": loss.detach(), "grads": {n: p.grad.clone() for n, p in model.named_parameters()
                                                      if p.grad is not None},
                     "logs": {k: v.detach() for k, v in logs.items()}}
    return res
