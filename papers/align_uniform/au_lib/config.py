"""Command-line surfaces of ``main_moco.py`` / ``main_lincls.py`` (every flag and default of the original), the
run name, the "=> Optimize:" line and the per-epoch learning rate."""
from __future__ import annotations

import argparse
import os
from typing import List, Sequence

from core.optim.schedules import cosine_epoch_lr, step_lr

from au_lib.nets import MODEL_NAMES


def _launch_flags(parser: argparse.ArgumentParser) -> None:
    """The launch flags of this fork: node-level ``--world-size/--rank``, ``--gpus`` list (replaces ``--gpu``)."""
    parser.add_argument("--world-size", default=-1, type=int, help="number of nodes for distributed training")
    parser.add_argument("--rank", default=-1, type=int, help="node rank for distributed training")
    parser.add_argument("--dist-url", default="tcp://localhost:10001", type=str,
                        help="url used to set up distributed training")
    parser.add_argument("--dist-backend", default="nccl", type=str,
                        help="distributed backend (gloo is used automatically without CUDA)")
    parser.add_argument("--seed", default=None, type=int, help="seed for initializing training.")
    parser.add_argument("--gpus", default=None, type=int, nargs="+",
                        help="GPU ids to use, e.g. --gpus 0 1 2 3 (default: all visible). Without CUDA: that many "
                             "CPU processes on gloo")
    parser.add_argument("--multiprocessing-distributed", action="store_true",
                        help="Use multi-processing distributed training to launch N processes per node, "
                             "one per listed GPU (CPU process without CUDA)")


def _common(parser: argparse.ArgumentParser, *, epochs: int, batch: int, lr: float, schedule: Sequence[int],
            wd: float) -> None:
    parser.add_argument("data", metavar="DIR", help="path to dataset (DIR/train[, DIR/val]) or 'synthetic'")
    parser.add_argument("-a", "--arch", metavar="ARCH", default="resnet50", choices=MODEL_NAMES,
                        help="model architecture: " + " | ".join(MODEL_NAMES) + " (default: resnet50)")
    parser.add_argument("-j", "--workers", default=32, type=int, metavar="N",
                        help="number of data loading workers per node (default: 32)")
    parser.add_argument("--epochs", default=epochs, type=int, metavar="N", help="number of total epochs to run")
    parser.add_argument("--start-epoch", default=0, type=int, metavar="N",
                        help="manual epoch number (useful on restarts)")
    parser.add_argument("-b", "--batch-size", default=batch, type=int, metavar="N",
                        help=f"mini-batch size (default: {batch}), the total batch size of all GPUs on the "
                             "current node")
    parser.add_argument("--lr", "--learning-rate", default=lr, type=float, metavar="LR",
                        help="initial learning rate", dest="lr")
    parser.add_argument("--schedule", default=list(schedule), nargs="*", type=int,
                        help="learning rate schedule (when to drop lr by 10x)")
    parser.add_argument("--momentum", default=0.9, type=float, metavar="M", help="momentum of SGD solver")
    parser.add_argument("--wd", "--weight-decay", default=wd, type=float, metavar="W",
                        help=f"weight decay (default: {wd:g})", dest="weight_decay")
    parser.add_argument("-p", "--print-freq", default=50, type=int, metavar="N", help="print frequency")
    parser.add_argument("--resume", default="", type=str, metavar="PATH",
                        help="path to latest checkpoint (default: none)")


def _shortening(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("additions of this repo (CPU / short runs)")
    g.add_argument("--image-size", default=224, type=int, help="crop size (224 in the original)")
    g.add_argument("--max-steps", default=None, type=int, help="stop each epoch after this many steps")
    g.add_argument("--num-samples", default=None, type=int,
                   help="number of images of the built-in 'synthetic' dataset (per split)")
    g.add_argument("--amp", default="off", choices=["off", "auto", "bf16", "fp16"],
                   help="mixed precision on CUDA (default: off = fp32 as the original)")


def moco_parser() -> argparse.ArgumentParser:
    """Flags of ``main_moco.py`` (spec 2a): batch 128, print-freq 50, no ``--moco-t``, loss weights 0/3/1."""
    p = argparse.ArgumentParser(description="MoCo with Alignment and Uniformity losses: unsupervised pre-training")
    _common(p, epochs=200, batch=128, lr=0.03, schedule=(120, 160), wd=1e-4)
    _launch_flags(p)
    p.add_argument("--moco-dim", default=128, type=int, help="feature dimension (default: 128)")
    p.add_argument("--moco-k", default=65536, type=int, help="queue size; number of negative keys (default: 65536)")
    p.add_argument("--moco-m", default=0.999, type=float,
                   help="moco momentum of updating key encoder (default: 0.999)")
    p.add_argument("--moco-contr-w", default=0, type=float, help="contrastive loss weight (default: 0)")
    p.add_argument("--moco-contr-tau", default=0.07, type=float, help="contrastive loss temperature (default: 0.07)")
    p.add_argument("--moco-align-w", default=3, type=float, help="align loss weight (default: 3)")
    p.add_argument("--moco-align-alpha", default=2, type=float, help="align loss alpha (default: 2)")
    p.add_argument("--moco-unif-w", default=1, type=float, help="uniform loss weight (default: 1)")
    p.add_argument("--moco-unif-t", default=3, type=float, help="uniform loss t (default: 3)")
    p.add_argument("--moco-unif-no-intra-batch", action="store_true",
                   help="do not use intra-batch distances in uniform loss (Eq. 17 instead of Eq. 18)")
    p.add_argument("--mlp", action="store_true", help="use mlp head")
    p.add_argument("--aug-plus", action="store_true", help="use moco v2 data augmentation")
    p.add_argument("--cos", action="store_true", help="use cosine lr schedule")
    _shortening(p)
    p.add_argument("--results-dir", default="results", type=str,
                   help="folder that holds the run folder <results-dir>/<run-name>/ (default: results)")
    return p


def lincls_parser() -> argparse.ArgumentParser:
    """Flags of ``main_lincls.py`` (spec 4): lr 30, batch 256, schedule 60/80, 100 epochs, wd 0."""
    p = argparse.ArgumentParser(description="Linear classification on frozen MoCo features")
    _common(p, epochs=100, batch=256, lr=30.0, schedule=(60, 80), wd=0.0)
    p.add_argument("-e", "--evaluate", dest="evaluate", action="store_true",
                   help="evaluate model on validation set")
    _launch_flags(p)
    p.add_argument("--pretrained", default="", type=str, help="path to moco pretrained checkpoint")
    _shortening(p)
    return p


def resolve_loss_terms(args) -> List[str]:
    """Zero weights switch their term off (tau/alpha/t -> None, as ``main()`` of the original) and the run-name
    terms are returned. Call once, in the launcher, before the batch is divided."""
    terms = [f"mocom{args.moco_m:g}"]
    if args.moco_contr_w != 0:
        terms.append(f"contr{args.moco_contr_w:g}tau{args.moco_contr_tau:g}")
    else:
        args.moco_contr_tau = None
    if args.moco_align_w != 0:
        terms.append(f"align{args.moco_align_w:g}alpha{args.moco_align_alpha:g}")
    else:
        args.moco_align_alpha = None
    if args.moco_unif_w != 0:
        terms.append(f"unif{args.moco_unif_w:g}t{args.moco_unif_t:g}"
                     + ("(no-intra-batch)" if args.moco_unif_no_intra_batch else ""))
    else:
        args.moco_unif_t = None
    for flag, name in ((args.mlp, "mlp"), (args.aug_plus, "aug+"), (args.cos, "cos")):
        if flag:
            terms.append(name)
    terms += [f"b{args.batch_size}", f"lr{args.lr:g}", f"e{','.join(map(str, args.schedule))},{args.epochs}"]
    return terms


def run_name(args) -> str:
    return "_".join(resolve_loss_terms(args))


def optimize_line(args) -> str:
    """The startup line that lists the active terms (after :func:`resolve_loss_terms`)."""
    parts = []
    if args.moco_contr_tau is not None:
        parts.append(f"{args.moco_contr_w:g} * loss_contrastive(tau={args.moco_contr_tau:g})")
    if args.moco_align_alpha is not None:
        parts.append(f"{args.moco_align_w:g} * loss_align(alpha={args.moco_align_alpha:g})")
    if args.moco_unif_t is not None:
        name = "loss_uniform_no_intra_batch" if args.moco_unif_no_intra_batch else "loss_uniform"
        parts.append(f"{args.moco_unif_w:g} * {name}(t={args.moco_unif_t:g})")
    return "=> Optimize:\n\t" + "\n\t + ".join(parts)  # separator "\n\t + " as the original


def epoch_lr(base_lr: float, epoch: int, epochs: int, schedule: Sequence[int], cos: bool = False) -> float:
    """``adjust_learning_rate`` of the original, set once at the start of each epoch (no warm-up):
    cosine ``lr * 0.5 * (1 + cos(pi * epoch / epochs))`` or x0.1 for every milestone <= epoch."""
    if cos:
        return cosine_epoch_lr(base_lr, epoch, epochs)
    return step_lr(base_lr, epoch, schedule, 0.1)


def lincls_save_folder(pretrained: str, batch_size: int, lr: float, schedule: Sequence[int], epochs: int) -> str:
    """``<dir of pretrained>/lincls/<basename of pretrained>/b{bs}_lr{lr:g}_e{schedule},{epochs}``."""
    return os.path.join(os.path.dirname(pretrained) or ".", "lincls", os.path.basename(pretrained),
                        f"b{batch_size}_lr{lr:g}_e{','.join(map(str, schedule))},{epochs}")
