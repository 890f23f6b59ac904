"""solo-learn ``main_linear.py``: offline linear evaluation of a pretrained backbone (ImageNet-100 scripts,
spec §4d). Frozen backbone in eval mode, one Linear(F, classes), SGD momentum 0.9, lr scaled by
batch x devices / 256, MultiStepLR (gamma 0.1) per epoch; the loop is :func:`core.eval.run_linear_eval`.
The checkpoint's ``state_dict`` is read as solo does: ``encoder`` renamed ``backbone``, ``backbone.*`` kept.
"""
import argparse
import copy
import os

import torch
import torch.nn as nn

from core import dist
from core.data import build_loader, seed_everything
from core.engine import load_checkpoint, prepare_model
from core.errors import UserError, cli_main
from core.eval import LinearEvalConfig, run_linear_eval
from core.optim import cosine_epoch_lr, step_lr
from rdm_lib.models import solo_backbone
from rdm_lib.solo_args import NUM_CLASSES, add_dataset_args, add_logging_args, add_trainer_args
from rdm_lib.solo_data import linear_train_transform, num_classes_of, solo_dataset, val_transform


def build_parser():
    p = argparse.ArgumentParser(description="solo-learn linear evaluation")
    add_trainer_args(p)
    add_dataset_args(p)
    add_logging_args(p)
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--pretrained_feature_extractor", required=True, help="pretraining checkpoint (.ckpt)")
    p.add_argument("--optimizer", choices=("sgd",), default="sgd")
    p.add_argument("--lr", type=float, default=0.3)
    p.add_argument("--weight_decay", type=float, default=0.0)
    p.add_argument("--scheduler", choices=("step", "cosine", "none"), default="step")
    p.add_argument("--lr_decay_steps", type=int, nargs="+", default=[60, 80])
    p.add_argument("--crop_size", type=int, default=None, help="(ours) 32 on CIFAR, 224 otherwise")
    p.add_argument("--seed", type=int, default=5)
    return p


def load_solo_backbone(backbone: nn.Module, path: str) -> None:
    if not os.path.isfile(path):
        raise UserError(f"--pretrained_feature_extractor '{path}' does not exist")
    ckpt = load_checkpoint(path)
    if "state_dict" not in ckpt:
        raise UserError(f"'{path}' has no 'state_dict' (keys: {sorted(ckpt)[:6]})")
    state = {k.replace("encoder", "backbone"): v for k, v in ckpt["state_dict"].items()}
    state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    own = backbone.state_dict()
    missing = sorted(k for k in own if k not in state and not k.startswith("fc."))
    unexpected = sorted(k for k in state if k not in own)
    bad = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or bad:
        raise UserError(f"'{path}' does not match --backbone: missing {missing[:3]}, unexpected {unexpected[:3]}, "
                        f"shape mismatch {bad[:3]}")
    backbone.load_state_dict(state, strict=False)
    print(f"=> loaded backbone from '{path}'")


def run(ctx, args):
    seed_everything(args.seed, ctx.rank)
    size = args.crop_size or (32 if args.dataset in ("cifar10", "cifar100") else 224)
    train_ds = solo_dataset(args.dataset, args.data_dir, args.train_dir, "train",
                            linear_train_transform(args.dataset, size), size)
    val_ds = solo_dataset(args.dataset, args.data_dir, args.val_dir, "val", val_transform(args.dataset, size), size)
    num_classes = num_classes_of(train_ds, args.dataset, NUM_CLASSES)
    model = solo_backbone(args.backbone, args.dataset in ("cifar10", "cifar100"))
    load_solo_backbone(model, args.pretrained_feature_extractor)
    model.fc = nn.Linear(model.feat_dim, num_classes)
    for n, p in model.named_parameters():
        p.requires_grad = n.startswith("fc.")
    reference = copy.deepcopy(model.state_dict())
    lr = args.lr * args.batch_size * ctx.world_size / 256
    optimizer = torch.optim.SGD(model.fc.parameters(), lr=lr, momentum=0.9, weight_decay=args.weight_decay)
    inner, wrapped = prepare_model(model, ctx, sync_bn=False)
    train_loader = build_loader(train_ds, args.batch_size, shuffle=True, drop_last=False,
                                num_workers=args.num_workers, seed=args.seed)
    val_loader = build_loader(val_ds, args.batch_size, shuffle=False, drop_last=False,
                              num_workers=args.num_workers)
    schedules = {"step": lambda e: step_lr(lr, e, args.lr_decay_steps, 0.1),
                 "cosine": lambda e: cosine_epoch_lr(lr, e, args.max_epochs), "none": lambda e: lr}
    out_dir = os.path.join(args.checkpoint_dir, "linear", args.name)
    cfg = LinearEvalConfig(epochs=args.max_epochs, output_dir=out_dir, arch=args.backbone,
                           ckpt_name=f"{args.name}.ckpt", best_name=f"{args.name}-best.ckpt",
                           resume=os.path.join(out_dir, f"{args.name}.ckpt") if args.auto_resume and
                           os.path.isfile(os.path.join(out_dir, f"{args.name}.ckpt")) else "",
                           max_steps_per_epoch=args.max_steps_per_epoch, model_prefix="")
    res = run_linear_eval(wrapped, optimizer, train_loader, val_loader, cfg, ctx,
                          lr_at_epoch=schedules[args.scheduler], reference_state=reference)
    print(f"val_acc1 {res['acc1']:.3f} val_acc5 {res['acc5']:.3f} best {res['best_acc1']:.3f}")


@cli_main
def main(argv=None):
    args = build_parser().parse_args(argv)
    devices = args.devices
    gpus = devices if torch.cuda.is_available() and args.accelerator != "cpu" else None
    dist.launch(run, args, multiprocessing_distributed=len(devices) > 1, world_size=1, rank=0,
                dist_url="env://", gpus=gpus if gpus else (devices if len(devices) > 1 else None))


if __name__ == "__main__":
    main()
