"""Linear evaluation.

* :func:`run_linear_eval`: the MoCo / SimSiam ``main_lincls.py`` protocol shared by UniGrad ``lineval.py``,
  RDM and align_uniform: a frozen backbone in eval mode (BN statistics frozen), only ``fc`` trained, lr set
  once per epoch, validation every epoch, ``checkpoint.pth.tar`` + ``model_best.pth.tar``, and the check that
  the backbone did not change during training.
* :func:`linear_probe_features`: a logistic-regression probe on cached features (monitor and demo).
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DistributedSampler

from core import dist
from core.engine.checkpoint import copy_checkpoint, load_checkpoint, save_checkpoint
from core.engine.probe import Probe, kill_point, maybe_step
from core.engine.trainer import to_device
from core.errors import UserError


def accuracy(output: torch.Tensor, target: torch.Tensor, topk: Sequence[int] = (1,)) -> List[torch.Tensor]:
    """Number of correct top-k predictions (as tensors, no host sync)."""
    maxk = min(max(topk), output.shape[1])
    pred = output.topk(maxk, 1, True, True).indices
    correct = pred.eq(target[:, None])
    return [correct[:, :min(k, maxk)].any(1).sum() for k in topk]


def init_linear_head(fc: nn.Linear, std: float = 0.01) -> None:
    """MoCo/SimSiam: ``fc.weight ~ N(0, 0.01)``, ``fc.bias = 0``."""
    fc.weight.data.normal_(mean=0.0, std=std)
    fc.bias.data.zero_()


def freeze_all_but(model: nn.Module, trainable: Sequence[str] = ("fc.weight", "fc.bias")) -> None:
    for name, p in model.named_parameters():
        p.requires_grad = name in trainable


def sanity_check(state_dict: Dict[str, torch.Tensor], reference: Dict[str, torch.Tensor],
                 ignore: Sequence[str] = ("fc.",)) -> None:
    """The backbone must be unchanged by linear training (MoCo ``sanity_check``): every non-``fc`` tensor of
    ``state_dict`` equals ``reference``."""
    for k, v in reference.items():
        if k.startswith(tuple(ignore)):
            continue
        if k not in state_dict:
            raise UserError(f"sanity check: key '{k}' is missing from the trained model")
        if not torch.equal(state_dict[k].cpu(), v.cpu()):
            raise AssertionError(f"sanity check failed: backbone tensor '{k}' changed during linear training")
    print("=> sanity check passed.")


@dataclass
class LinearEvalConfig:
    epochs: int
    output_dir: str
    arch: str = "resnet50"
    start_epoch: int = 0
    print_freq: int = 10
    ckpt_name: str = "checkpoint.pth.tar"   # may contain {epoch:04d} (formatted with the 0-based epoch)
    best_name: str = "model_best.pth.tar"
    resume: str = ""
    evaluate: bool = False
    max_steps_per_epoch: Optional[int] = None
    model_prefix: str = "module."   # the originals save the DDP-wrapped state dict


def pretrained_start_epoch(start_epoch: int, pretrained) -> int:
    """The lincls scripts' ``--start-epoch``: ``--pretrained`` resets it to 0 as the originals do (one warning
    line when it was set; ``--resume`` then sets it from the checkpoint)."""
    if pretrained and start_epoch != 0:
        print(f"warning: --start-epoch={start_epoch} is reset to 0 by --pretrained (as the original)",
              file=sys.stderr, flush=True)
        return 0
    return start_epoch


@torch.no_grad()
def validate(model: nn.Module, loader, device, max_steps: Optional[int] = None) -> Dict[str, float]:
    """Top-1 / top-5 (%) and mean loss over ``loader``; summed over ranks when the loader is sharded."""
    model.eval()
    sums = torch.zeros(4, device=device)
    for i, (x, y) in enumerate(loader):
        if max_steps and i >= max_steps:
            break
        x, y = to_device(x, device), y.to(device)
        out = model(x)
        c1, c5 = accuracy(out, y, (1, 5))
        sums += torch.stack([F.cross_entropy(out, y, reduction="sum"), c1.float(), c5.float(),
                             torch.tensor(float(y.shape[0]), device=device)])
    from core.data.loader import UnpaddedDistributedSampler

    if isinstance(getattr(loader, "sampler", None), (DistributedSampler, UnpaddedDistributedSampler)) \
            and dist.is_dist():
        torch.distributed.all_reduce(sums)
    loss, c1, c5, n = sums.tolist()
    n = max(n, 1.0)
    return {"loss": loss / n, "acc1": 100 * c1 / n, "acc5": 100 * c5 / n}


def run_linear_eval(model: nn.Module, optimizer: torch.optim.Optimizer, train_loader, val_loader,
                    cfg: LinearEvalConfig, ctx: Optional[dist.DistContext] = None, *,
                    lr_at_epoch: Callable[[int], float], set_lr: Optional[Callable[[float], None]] = None,
                    reference_state: Optional[Dict[str, torch.Tensor]] = None,
                    extra_state: Optional[Callable[[Dict[str, float]], Dict]] = None) -> Dict[str, float]:
    """Train the linear head of ``model`` (possibly DDP-wrapped) and return ``{'best_acc1', 'acc1', ...}``.

    ``lr_at_epoch(epoch)`` gives the lr set at the start of each epoch (``set_lr`` applies it; default: every
    group). ``reference_state`` (the backbone right after loading the pretrained weights) enables the sanity
    check after the first epoch. ``extra_state(results)`` adds keys to each checkpoint (it receives that
    epoch's validation results: ``acc1``, ``acc5``, ``loss``).
    """
    ctx = ctx or dist.DistContext()
    inner = dist.unwrap(model)
    os.makedirs(cfg.output_dir, exist_ok=True)
    best_acc1, start = 0.0, cfg.start_epoch
    if cfg.resume:
        ckpt = load_checkpoint(cfg.resume)
        if "state_dict" not in ckpt:
            raise UserError(f"'{cfg.resume}' is not a linear-eval checkpoint (keys: {sorted(ckpt)[:6]})")
        sd = {k[len(cfg.model_prefix):] if k.startswith(cfg.model_prefix) else k: v
              for k, v in ckpt["state_dict"].items()}
        inner.load_state_dict(sd)
        if "optimizer" in ckpt and not cfg.evaluate:
            optimizer.load_state_dict(ckpt["optimizer"])
        start, best_acc1 = ckpt.get("epoch", 0), float(ckpt.get("best_acc1", 0.0))
        print(f"=> loaded checkpoint '{cfg.resume}' (epoch {start})")
    if cfg.evaluate:
        res = validate(model, val_loader, ctx.device, cfg.max_steps_per_epoch)
        print(f" * Acc@1 {res['acc1']:.3f} Acc@5 {res['acc5']:.3f}")
        return {"best_acc1": res["acc1"], **res}

    def apply(lr):
        if set_lr:
            set_lr(lr)
        else:
            for g in optimizer.param_groups:
                g["lr"] = lr

    res: Dict[str, float] = {}
    probe = Probe.from_env("lineval", inner, optimizer, ctx.rank)  # contract tests only (off by default)
    for epoch in range(start, cfg.epochs):
        if hasattr(train_loader.sampler, "set_epoch"):
            train_loader.sampler.set_epoch(epoch)
        apply(lr_at_epoch(epoch))
        model.eval()  # frozen BN: the whole model stays in eval mode
        t0, seen = time.time(), 0
        run = torch.zeros(2, device=ctx.device)
        for i, (x, y) in enumerate(probe.batches(train_loader) if probe is not None else train_loader):
            if cfg.max_steps_per_epoch and i >= cfg.max_steps_per_epoch:
                break
            kill_point(epoch * len(train_loader) + i, ctx.rank)
            with maybe_step(probe):
                x, y = to_device(x, ctx.device), y.to(ctx.device, non_blocking=True)
                out = model(x)
                loss = F.cross_entropy(out, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                run += torch.stack([loss.detach(), accuracy(out.detach(), y)[0].float() / y.shape[0]])
            if probe is not None:
                probe.after_step(epoch * len(train_loader) + i, loss)
            seen += y.shape[0] * ctx.world_size
            if (i + 1) % cfg.print_freq == 0:
                l, a = (run / (i + 1)).tolist()
                print(f"Epoch: [{epoch}][{i + 1}/{len(train_loader)}] loss {l:.4f} acc1 {100 * a:.2f} "
                      f"lr {optimizer.param_groups[0]['lr']:.4g} {seen / (time.time() - t0):.1f} img/s")
        res = validate(model, val_loader, ctx.device, cfg.max_steps_per_epoch)
        print(f"Epoch {epoch}: * Acc@1 {res['acc1']:.3f} Acc@5 {res['acc5']:.3f}")
        is_best = res["acc1"] > best_acc1
        best_acc1 = max(best_acc1, res["acc1"])
        if ctx.is_main:
            sd = {cfg.model_prefix + k: v for k, v in inner.state_dict().items()}
            state = {"epoch": epoch + 1, "arch": cfg.arch, "state_dict": sd, "best_acc1": best_acc1,
                     "optimizer": optimizer.state_dict()}
            if extra_state:
                state.update(extra_state(res))
            path = save_checkpoint(state, os.path.join(cfg.output_dir, cfg.ckpt_name.format(epoch=epoch)))
            if is_best:
                copy_checkpoint(path, os.path.join(cfg.output_dir, cfg.best_name))
            if epoch == start and reference_state is not None:
                sanity_check(inner.state_dict(), reference_state)
    if probe is not None:
        probe.finish()
    return {"best_acc1": best_acc1, **res}


def linear_probe_features(train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor,
                          test_y: torch.Tensor, num_classes: int, epochs: int = 200, lr: float = 0.05,
                          weight_decay: float = 1e-4, seed: int = 0) -> float:
    """Top-1 (%) of a multinomial logistic regression trained full-batch with Adam on standardised cached
    features (frozen backbone, no augmentation): a fast, deterministic linear probe."""
    g = torch.Generator().manual_seed(seed)
    mu, sd = train_f.mean(0), train_f.std(0).clamp_min(1e-6)
    xtr, xte = (train_f - mu) / sd, (test_f - mu) / sd
    fc = nn.Linear(xtr.shape[1], num_classes)
    with torch.no_grad():
        fc.weight.copy_(torch.randn(fc.weight.shape, generator=g) * 0.01)
        fc.bias.zero_()
    opt = torch.optim.Adam(fc.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(epochs):
        opt.zero_grad()
        F.cross_entropy(fc(xtr), train_y).backward()
        opt.step()
    with torch.no_grad():
        return float((fc(xte).argmax(1) == test_y).float().mean() * 100)
