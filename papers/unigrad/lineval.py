"""Linear evaluation (original ``lineval.py``, "borrowed from SimSiam") on core.eval.linear.

    ./run_linear.sh PRETRAINED_CKPT DATA_PATH NUM_GPUS         # = lineval.py --pretrained .. --data .. --lars

Frozen ResNet (eval mode, BN frozen), fc ~ N(0, 0.01^2) / 0 trained with SGD (wrapped in apex-LARC-style
LARS with ``--lars``), init_lr = lr * batch_size / 256, cosine per epoch without warm-up. Loads the *online*
encoder of a pretraining checkpoint: ``model`` -> ``module.encoder.*`` in this repo's layout (torchvision
names) or the original's (``module.encoder.<Sequential index>.*``).
"""
from __future__ import annotations

import argparse
import os
import random
from typing import Dict

import torch
import torch.nn as nn

from core import dist
from core.augment import eval_transform, linear_train_transform
from core.backbones import build_backbone
from core.data import build_dataset, build_loader, is_builtin
from core.engine import load_checkpoint, setup_run
from core.eval.linear import pretrained_start_epoch
from core.errors import UserError, cli_main
from core.eval import LinearEvalConfig, freeze_all_but, init_linear_head, run_linear_eval
from core.flags import check_flags
from core.optim import LARS, cosine_epoch_lr
from unigrad_lib.launch import per_rank_batch, slurm_env

# Flags accepted with no effect (one warning line for a non-default value) / that cannot work here (one-line
# error); README "Flag surface" lists the same entries.
NO_EFFECT = {
    "gpu": "the device is the process's LOCAL_RANK; the original also overwrites --gpu with LOCAL_RANK",
    "local_rank": "LOCAL_RANK comes from the environment (torch.distributed.launch --use_env, as run_linear.sh)",
}
UNSUPPORTED: dict = {}

# original encoder = nn.Sequential(conv1, bn1, relu, maxpool, layer1..4, avgpool, Flatten): index -> name
SEQ_INDEX = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="UniGrad linear evaluation")
    p.add_argument("--data", metavar="DIR", required=True, help="path to dataset (train/ and val/ inside), "
                   "or 'synthetic'")
    p.add_argument("-a", "--arch", metavar="ARCH", default="resnet50", help="backbone (default: resnet50)")
    p.add_argument("-j", "--workers", default=5, type=int, metavar="N", help="data loading workers (default: 5)")
    p.add_argument("--epochs", default=90, type=int, metavar="N", help="number of total epochs to run")
    p.add_argument("--start-epoch", default=0, type=int, metavar="N", help="manual epoch number (on restarts)")
    p.add_argument("-b", "--batch-size", default=4096, type=int, metavar="N",
                   help="total mini-batch size over all processes (default: 4096)")
    p.add_argument("--lr", "--learning-rate", default=0.1, type=float, metavar="LR", dest="lr",
                   help="base learning rate; init_lr = lr * batch_size / 256")
    p.add_argument("--momentum", default=0.9, type=float, metavar="M", help="momentum")
    p.add_argument("--wd", "--weight-decay", default=0.0, type=float, metavar="W", dest="weight_decay",
                   help="weight decay (default: 0.)")
    p.add_argument("-p", "--print-freq", default=10, type=int, metavar="N", help="print frequency (default: 10)")
    p.add_argument("--resume", default="", type=str, metavar="PATH", help="path to latest checkpoint")
    p.add_argument("-e", "--evaluate", dest="evaluate", action="store_true", help="evaluate model on validation set")
    p.add_argument("--world-size", default=-1, type=int, help="number of nodes for distributed training")
    p.add_argument("--rank", default=-1, type=int, help="node rank for distributed training")
    p.add_argument("--dist-url", default="env://", type=str, help="url used to set up distributed training")
    p.add_argument("--dist-backend", default="nccl", type=str, help="distributed backend (gloo without CUDA)")
    p.add_argument("--seed", default=None, type=int, help="seed for initializing training")
    p.add_argument("--gpu", default=None, type=int, help="GPU id to use (set from LOCAL_RANK)")
    p.add_argument("--multiprocessing-distributed", action="store_true",
                   help="spawn one process per GPU (CPU: SSL_CPU_PROCS processes)")
    p.add_argument("--pretrained", default="", type=str, help="path to the UniGrad pretrained checkpoint")
    p.add_argument("--lars", action="store_true", help="use LARS (apex LARC, trust 0.001, clip=False)")
    p.add_argument("--slurm", default=False, help="launch from SLURM variables (any value enables it)")
    p.add_argument("--port", default=29501, type=int, help="master port for --slurm")
    p.add_argument("--save_name", default="checkpoint.pth.tar", type=str, help="checkpoint file (model_best.pth.tar "
                   "is written next to it)")
    p.add_argument("--local_rank", "--local-rank", default=None, type=int, help=argparse.SUPPRESS)
    # additions for small runs (not in the original)
    p.add_argument("--image-size", default=224, type=int, help="crop size (224; 32 for the built-in data)")
    p.add_argument("--max-steps-per-epoch", default=None, type=int, help="shorten epochs (smoke tests)")
    p.add_argument("--num-samples", default=None, type=int, help="train size of the synthetic set")
    return p


def encoder_state_from_checkpoint(ckpt: Dict) -> Dict[str, torch.Tensor]:
    """The online encoder of a pretraining checkpoint, in torchvision names (original ``lineval.py``: keep
    ``module.encoder*`` but not ``module.encoder.fc``, strip the prefix)."""
    if not isinstance(ckpt, dict) or "model" not in ckpt or not isinstance(ckpt["model"], dict):
        keys = sorted(ckpt)[:6] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise UserError(f"not a UniGrad pretraining checkpoint: no 'model' state dict (top-level keys: {keys})")
    state = ckpt["model"]
    out = {}
    for prefix in ("module.encoder.", "encoder."):
        sel = {k[len(prefix):]: v for k, v in state.items()
               if k.startswith(prefix) and not k.startswith(prefix + "fc")}
        if sel:
            out = sel
            break
    if not out:
        raise UserError(f"checkpoint has no 'module.encoder.*' weights (keys like {sorted(state)[:3]})")
    if any(k.split(".", 1)[0].isdigit() for k in out):  # original nn.Sequential layout
        conv = {}
        for k, v in out.items():
            head, rest = k.split(".", 1)
            if head not in SEQ_INDEX:
                raise UserError(f"unexpected key 'module.encoder.{k}' in an original-layout checkpoint")
            conv[f"{SEQ_INDEX[head]}.{rest}"] = v
        out = conv
    return out


def build_classifier(arch: str, num_classes: int) -> nn.Module:
    """ResNet trunk with torchvision names + a linear ``fc`` (the original's torchvision resnet50())."""
    model = build_backbone(arch)
    model.fc = nn.Linear(model.feat_dim, num_classes)
    return model


def load_pretrained(model: nn.Module, path: str) -> None:
    state = encoder_state_from_checkpoint(load_checkpoint(path))
    own = model.state_dict()
    wrong = [k for k, v in state.items() if k in own and tuple(own[k].shape) != tuple(v.shape)]
    if wrong:
        k = wrong[0]
        raise UserError(f"'{path}' does not match {type(model).__name__} (--arch?): {len(wrong)} tensors differ in "
                        f"shape, e.g. {k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if set(missing) != {"fc.weight", "fc.bias"} or unexpected:
        raise UserError(f"'{path}' does not match {type(model).__name__}: missing "
                        f"{sorted(set(missing) - {'fc.weight', 'fc.bias'})[:4]}, unexpected {unexpected[:4]}")
    print(f"=> loaded pre-trained model '{path}'")


def check_args(args) -> None:
    """Numbers that cannot describe a run are one-line errors (the original trains 0 epochs or divides by 0)."""
    for flag, value, low in (("--epochs", args.epochs, 0), ("--start-epoch", args.start_epoch, 0),
                             ("--batch-size", args.batch_size, 1), ("--workers", args.workers, 0),
                             ("--print-freq", args.print_freq, 1), ("--image-size", args.image_size, 1)):
        if value < low:
            raise UserError(f"{flag} must be >= {low}, got {value}")
    for flag, value in (("--max-steps-per-epoch", args.max_steps_per_epoch), ("--num-samples", args.num_samples)):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be a positive integer, got {value}")


def start_epoch(args) -> int:
    """``--start-epoch`` after the originals' ``--pretrained`` reset (see ``pretrained_start_epoch``)."""
    return pretrained_start_epoch(args.start_epoch, args.pretrained)


def main_worker(ctx: dist.DistContext, args) -> None:
    if args.seed is not None:
        random.seed(args.seed)
        torch.manual_seed(args.seed)
        torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = True  # as the original lineval.py (set unconditionally)
    W = ctx.world_size
    size = args.image_size
    if is_builtin(args.data):
        train_set = build_dataset(args.data, "train", linear_train_transform(size), image_size=size,
                                  num_samples=args.num_samples)
        val_set = build_dataset(args.data, "val", eval_transform(size), image_size=size)
    else:
        train_set = build_dataset(args.data, "train", linear_train_transform(size))
        val_set = build_dataset(args.data, "val", eval_transform(size))
    model = build_classifier(args.arch, len(train_set.classes))
    freeze_all_but(model, ("fc.weight", "fc.bias"))
    init_linear_head(model.fc)
    reference = None
    if args.pretrained:
        load_pretrained(model, args.pretrained)
        reference = {k: v.clone() for k, v in model.state_dict().items()}
    init_lr = args.lr * args.batch_size / 256
    per_gpu = per_rank_batch(args.batch_size, ctx, "--batch-size")
    workers = int((args.workers + W - 1) / W)

    def make_optimizer(m: nn.Module):
        params = [p for p in m.parameters() if p.requires_grad]
        assert len(params) == 2  # fc.weight, fc.bias
        if args.lars:
            return LARS(params, init_lr, momentum=args.momentum, weight_decay=args.weight_decay, eta=0.001,
                        clip=False, mode="larc")
        return torch.optim.SGD(params, init_lr, momentum=args.momentum, weight_decay=args.weight_decay)

    run = setup_run(ctx, model, make_optimizer=make_optimizer)  # device -> DDP (broadcast) -> optimizer
    wrapped, optimizer = run.wrapped, run.optimizer
    train_loader = build_loader(train_set, per_gpu, shuffle=True, drop_last=False, num_workers=workers)
    val_loader = build_loader(val_set, 256, shuffle=False, drop_last=False, num_workers=workers,
                                exact_eval=True)
    out_dir = os.path.dirname(args.save_name) or "."
    cfg = LinearEvalConfig(epochs=args.epochs, output_dir=out_dir, arch=args.arch, start_epoch=start_epoch(args),
                           print_freq=args.print_freq, ckpt_name=os.path.basename(args.save_name),
                           resume=args.resume, evaluate=args.evaluate,
                           max_steps_per_epoch=args.max_steps_per_epoch)
    res = run_linear_eval(wrapped, optimizer, train_loader, val_loader, cfg, ctx,
                          lr_at_epoch=lambda e: cosine_epoch_lr(init_lr, e, args.epochs),
                          reference_state=reference)
    print(f" * best Acc@1 {res['best_acc1']:.3f}")


@cli_main
def main(argv=None) -> None:
    parser = get_parser()
    args = parser.parse_args(argv)
    check_args(args)
    if int(os.environ.get("RANK", "0") or 0) == 0:
        check_flags(args, parser, NO_EFFECT, UNSUPPORTED)
    else:
        check_flags(args, parser, {}, UNSUPPORTED)
    if args.slurm:
        slurm_env(args.port)
    if args.pretrained and not os.path.isfile(args.pretrained):
        raise UserError(f"no checkpoint found at '{args.pretrained}'")
    os.makedirs(os.path.dirname(os.path.abspath(args.save_name)), exist_ok=True)  # a bad path: one error line
    dist.launch(main_worker, args, multiprocessing_distributed=args.multiprocessing_distributed,
                world_size=args.world_size if args.world_size > 0 else 1, rank=max(args.rank, 0),
                dist_url=args.dist_url, dist_backend=args.dist_backend)


if __name__ == "__main__":
    main()
