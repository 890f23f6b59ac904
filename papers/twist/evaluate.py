"""Linear evaluation (``--weights freeze``) and semi-supervised fine-tuning (``--weights finetune``) of a
pre-trained ResNet (bytedance/TWIST ``evaluate.py``, modified from Barlow Twins; spec 7.1-7.2).

    python3 evaluate.py DATA OUTPUT/checkpoint.pth --weight-decay 0 --checkpoint-dir OUT/linear/ \
        --batch-size 1024 --val_epoch 1 --lr-classifier 0.2
    python3 evaluate.py DATA MODEL --weights finetune --lr-backbone 0.04 --lr-classifier 0.2 \
        --train-percent 1 --weight-decay 0 --epochs 20 --backbone resnet50

A ``train.py`` checkpoint is read directly: with ``--key auto`` (default here) the ``backbone`` entry is used
when present (the original defaulted to ``none`` and needed ``--key backbone``).

Like the original, one process is spawned per visible GPU, each with ``--batch-size`` // N images (torchrun /
``torch.distributed.launch`` also work); without CUDA one CPU process runs, or ``SSL_CPU_PROCS`` gloo processes.
"""
from __future__ import annotations

import argparse
import os

import torch

from core import dist
from core.augment.recipes import eval_transform, linear_train_transform
from core.backbones import build_backbone
from core.data import build_dataset, build_loader, read_file_list, seed_everything, subset_by_file_list
from core.data import is_builtin
from core.engine import load_checkpoint, setup_run
from core.errors import UserError, cli_main
from core.flags import check_flags
from core.eval import load_backbone_weights
from core.eval.finetune import Classifier, train_classifier


# accepted as the original accepts them, with no effect there either (a non-default value prints a warning)
NO_EFFECT = {
    "mode": "unused in the original",
}
# cannot work here: a non-default value stops with a one-line error
UNSUPPORTED = {
    "dataset": "the original knows only imagenet (NCLS = {'imagenet': 1000}; any other name is a KeyError "
               "there); here the classes come from the data folder",
    "use_lmdb": "LMDB is not supported in this repo; pass an ImageFolder tree or 'synthetic'",
}


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="TWIST linear evaluation / semi-supervised fine-tuning")
    a = p.add_argument
    a("data", type=str, nargs="?", default="synthetic",
      help="'synthetic' or a folder with train/ and val/ (ImageNet layout)")
    a("pretrained", type=str, nargs="?", default="", help="pre-trained checkpoint ('' = random init)")
    a("--dataset", type=str, default="imagenet", help="only imagenet (as the original); classes from the data")
    a("--mode", type=str, default="dev", help="unused (kept from the original)")
    a("--backbone", type=str, default="resnet50", help="resnet50, resnet50w2/w4/w5, resnet_tiny, vit_s, ...")
    a("--weights", type=str, default="freeze", choices=("finetune", "freeze"))
    a("--key", type=str, default="auto",
      help="checkpoint entry: auto (backbone > state_dict > model), backbone, ema_backbone, teacher_backbone, "
           "none (the file is the state dict)")
    a("--train-percent", dest="train_percent", type=int, default=100, choices=(100, 10, 1))
    a("--subset-list", dest="subset_list", type=str, default="",
      help="repo addition: SimCLR-format file list for 1/10 %% (default DATA/{1,10}percent.txt)")
    a("--workers", type=int, default=8)
    a("--epochs", type=int, default=100)
    a("--batch-size", dest="batch_size", type=int, default=256, help="total batch over all processes")
    a("--lr-backbone", dest="lr_backbone", type=float, default=0.0, help="backbone lr (finetune)")
    a("--lr-classifier", dest="lr_classifier", type=float, default=0.3)
    a("--weight-decay", "--weight_decay", dest="weight_decay", type=float, default=1e-6)
    a("--print-freq", dest="print_freq", type=int, default=100)
    a("--val_epoch", type=int, default=1, help="validate at epochs 0, n, 2n, ... and the last one")
    a("--checkpoint-dir", dest="checkpoint_dir", type=str, default="./checkpoint/lincls/")
    a("--use_lmdb", type=int, default=0, help="LMDB is not supported here (1 = error)")
    a("--img_size", type=int, default=224, help="repo addition: crop size (224 = the original)")
    a("--max_steps_per_epoch", type=int, default=0, help="repo addition: cap steps per epoch (0 = all)")
    a("--seed", type=int, default=0)
    return p


def subset(args, ds):
    if args.train_percent == 100:
        return ds
    if is_builtin(args.data):
        # the built-in sets have no SimCLR list: keep the first round(k % of n_class) images of every class
        by_class = {}
        for i, y in enumerate(ds.targets):
            by_class.setdefault(y, []).append(i)
        pct = args.train_percent / 100
        keep = sorted(i for idx in by_class.values() for i in idx[:max(1, round(len(idx) * pct))])
        sub = torch.utils.data.Subset(ds, keep)
        sub.targets = [ds.targets[i] for i in keep]
        return sub
    path = args.subset_list or os.path.join(args.data, f"{args.train_percent}percent.txt")
    if not os.path.isfile(path):
        raise UserError(f"--train-percent {args.train_percent} needs SimCLR's subset list at '{path}' "
                        f"(imagenet_subsets/{args.train_percent}percent.txt) or --subset-list")
    return subset_by_file_list(ds, read_file_list(path))


def load_weights(backbone, args):
    if not args.pretrained:
        return None
    ckpt = load_checkpoint(args.pretrained)
    if args.key == "auto":
        src = ckpt
    elif args.key == "none":
        src = ckpt if not isinstance(ckpt, dict) or "state_dict" not in ckpt else ckpt["state_dict"]
    else:
        if not isinstance(ckpt, dict) or args.key not in ckpt:
            raise UserError(f"checkpoint '{args.pretrained}' has no entry '{args.key}' "
                            f"(keys: {sorted(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__})")
        src = ckpt[args.key]
    load_backbone_weights(backbone, src, ignore=("fc.", "head."))
    print(f"=> loaded pre-trained backbone from '{args.pretrained}' (key {args.key})")
    return {k: v.detach().clone() for k, v in backbone.state_dict().items()}


def build_optimizer(model: Classifier, args) -> torch.optim.Optimizer:
    """SGD momentum 0.9 with the classifier group at ``--lr-classifier`` and, when fine-tuning, the backbone
    group at ``--lr-backbone``; ``--weight-decay`` on both (the original's ``param_groups``)."""
    groups = [dict(params=list(model.fc.parameters()), lr=args.lr_classifier, name="classifier")]
    if not model.freeze:
        groups.append(dict(params=list(model.backbone.parameters()), lr=args.lr_backbone, name="backbone"))
    return torch.optim.SGD(groups, lr=args.lr_classifier, momentum=0.9, weight_decay=args.weight_decay)


def main_worker(ctx: dist.DistContext, args) -> None:
    seed_everything(args.seed, ctx.rank)
    per = dist.per_process_batch(args.batch_size, ctx.world_size)  # the original's batch_size // world_size
    print(f"=> {ctx.world_size} process{'es' if ctx.world_size > 1 else ''} x {per} images")
    train_ds = subset(args, build_dataset(args.data, "train", linear_train_transform(args.img_size),
                                          image_size=args.img_size, seed=args.seed))
    val_ds = build_dataset(args.data, "val", eval_transform(args.img_size), image_size=args.img_size,
                           seed=args.seed)
    train_loader = build_loader(train_ds, per, shuffle=True, drop_last=False, num_workers=args.workers,
                                seed=args.seed)
    # every val image counted once over the ranks (the original validated the whole set on rank 0)
    val_loader = build_loader(val_ds, per, shuffle=False, drop_last=False, num_workers=args.workers,
                              exact_eval=True)
    classes = getattr(val_ds, "classes", None) or sorted(set(val_ds.targets))
    backbone = build_backbone(args.backbone, img_size=args.img_size)
    reference = load_weights(backbone, args)
    freeze = args.weights == "freeze"
    # plain per-process BN when fine-tuning, as the original (no SyncBN)
    run = setup_run(ctx, Classifier(backbone, backbone.feat_dim, len(classes), freeze),
                    make_optimizer=lambda m: build_optimizer(m, args), sync_bn=False, ddp=True)
    model, wrapped, optimizer = run.model, run.wrapped, run.optimizer
    train_classifier(model, wrapped, optimizer, train_loader, val_loader, epochs=args.epochs, out_dir=args.checkpoint_dir,
        ctx=ctx, val_every=args.val_epoch, max_steps=args.max_steps_per_epoch or None,
        print_freq=args.print_freq, reference=reference if freeze else None,
        desc="linear" if freeze else "finetune")


@cli_main
def main(argv=None) -> None:
    parser = get_parser()
    args = parser.parse_args(argv)
    check_flags(args, parser, NO_EFFECT, UNSUPPORTED)
    if args.val_epoch < 1 or args.epochs < 1:
        raise UserError("--epochs and --val_epoch must be positive")
    for flag, v in (("--workers", args.workers), ("--max_steps_per_epoch", args.max_steps_per_epoch)):
        if v < 0:
            raise UserError(f"{flag} must be non-negative, got {v}")
    # made here, inside the error wrapper and before any process is spawned: a bad path is one error line
    os.makedirs(args.checkpoint_dir, exist_ok=True)
    # one process per visible GPU, as the original's torch.multiprocessing.spawn (torchrun also works)
    dist.launch(main_worker, args, multiprocessing_distributed=True)


if __name__ == "__main__":
    main()
