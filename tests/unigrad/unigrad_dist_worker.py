"""Helper for test_unigrad_dist.py: run every method/form on a BN-free SiameseNet (linear encoder and
projector) for two steps, once in this process on the global batch and once in 2 gloo processes on halves.

usage: python unigrad_dist_worker.py OUT_DIR
"""
import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "papers", "unigrad"))

import unigrad_lib.model as M  # noqa: E402
from unigrad_lib.config import load_config  # noqa: E402

CONFIG = os.path.join(HERE, "..", "..", "papers", "unigrad", "configs", "unigrad.py")
CASES = [("loss_unigrad", "grad_mm"), ("loss_unigrad", "grad"), ("loss_simclr_grad_mm", "grad_mm"),
         ("loss_simclr_grad_mm", "grad"), ("loss_moco_grad_mm", "grad_mm"), ("loss_byol_directpred_grad", "grad_mm"),
         ("loss_simsiam_directpred_grad", "grad"), ("loss_barlow_twins_grad_mm", "grad_mm"),
         ("loss_barlow_twins_grad_mm", "grad"), ("loss_vicreg_grad_mm", "grad_mm"), ("loss_vicreg_grad_mm", "grad"),
         ("loss_simclr", "loss"), ("loss_barlow_twins", "loss"), ("loss_vicreg", "loss"), ("loss_moco", "loss")]
B, D_IN, D = 8, 12, 16


class LinearTrunk(nn.Linear):
    """BN-free stand-in for the backbone (per-rank BN statistics would differ from the global batch)."""

    def __init__(self):
        super().__init__(D_IN, D_IN)
        self.feat_dim = D_IN


def no_bn_mlp(in_dim, hidden_dim, out_dim):
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.Tanh(), nn.Linear(hidden_dim, out_dim))


M.build_backbone = lambda name, **kw: LinearTrunk()
M.projection_mlp = no_bn_mlp


def build(loss, form):
    over = ["projector_input_dim=null", "projector_hidden_dim=16", f"projector_output_dim={D}",
            "queue_size=40", "whole_batch_size=8", f"loss={loss}", f"form={form}", "moco_t=0.2", "lambd=50",
            "rho=0.9", "eps=0.3", "diag_freq=0"]
    cfg = load_config(CONFIG, over)
    torch.manual_seed(0)
    m = M.SiameseNet(cfg).double()
    m.mm = 0.9
    if m.use_mm:  # make the momentum branch differ from the online one
        with torch.no_grad():
            for p in m.momentum_projector.parameters():
                p.add_(0.1)
    return m


def data(step):
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(B, D_IN, generator=g, dtype=torch.float64), torch.randn(B, D_IN, generator=g,
                                                                                dtype=torch.float64)


def run(rank, world):
    out = {}
    for loss, form in CASES:
        m = build(loss, form)
        for step in range(2):
            x1, x2 = data(step)
            if world > 1:
                n = B // world
                x1, x2 = x1[rank * n:(rank + 1) * n], x2[rank * n:(rank + 1) * n]
            m.zero_grad()
            val, _ = m([x1, x2])
            val.backward()
        key = f"{loss}/{form}"
        for name, p in m.named_parameters():
            if p.grad is not None:
                g = p.grad.clone()
                if world > 1:
                    dist.all_reduce(g)
                    g /= world
                out[f"{key}/grad/{name}"] = g
        for name in ("F", "queue"):
            if hasattr(m, name):
                out[f"{key}/{name}"] = getattr(m, name).clone()
    return out


def worker(rank, world, store, path):
    # a file store: no TCP port that a concurrently running test could take
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    out = run(rank, world)
    if rank == 0:
        torch.save(out, path)
    dist.barrier()
    dist.destroy_process_group()
    # skip interpreter teardown: under heavy load a background thread still joinable at exit occasionally
    # made the process abort ("terminate called without an active exception") after all work was done
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    torch.set_num_threads(1)
    out_dir = sys.argv[1]
    torch.save(run(0, 1), os.path.join(out_dir, "single.pt"))
    mp.spawn(worker, args=(2, os.path.join(out_dir, "store"), os.path.join(out_dir, "dist.pt")), nprocs=2)
