"""Linear evaluation of a frozen ViT (bytedance/TWIST ``evaluate_vitlinear.py``, from DINO's
``eval_linear.py``; spec 7.3): the CLS tokens of the last ``--n_last_blocks`` blocks, each through the final
LayerNorm, concatenated (plus the mean patch token of the last block with ``--avgpool_patchtokens``), a
linear layer N(0, 0.01), SGD momentum 0.9, lr = ``--lr`` x batch x world / 256, cosine over the epochs.

    python3 -m torch.distributed.launch --nproc_per_node=8 evaluate_vitlinear.py --arch vit_s \
        --pretrained_weights OUTPUT/checkpoint.pth --lr 0.02 --data_path DATA --output_dir OUTPUT
"""
from __future__ import annotations

import argparse
import os

import torch

from core import dist
from core.augment.recipes import BICUBIC, to_tensor_normalize
from core.backbones import build_backbone
from core.data import build_dataset, build_loader, seed_everything
from core.engine import setup_run
from core.errors import UserError, cli_main
from core.flags import check_flags
from core.eval import load_backbone_weights
from core.eval.finetune import Classifier, train_classifier


# accepted as the original accepts them, with no effect there either (a non-default value prints a warning)
NO_EFFECT = {
    "local_rank": "set by torch.distributed.launch; the process's local rank is read from LOCAL_RANK, as the "
                  "original's init_distributed_mode",
}
# set by the launcher, not by the user: listed above, but no warning on the ranks it is passed to
LAUNCHER_FLAGS = ("local_rank",)
# cannot work here: a non-default value stops with a one-line error
UNSUPPORTED = {
    "use_lmdb": "LMDB is not supported in this repo; pass an ImageFolder tree or 'synthetic'",
}


def bool_flag(s: str) -> bool:
    if s.lower() in ("off", "false", "0"):
        return False
    if s.lower() in ("on", "true", "1"):
        return True
    raise argparse.ArgumentTypeError("invalid value for a boolean flag")


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("Evaluation with linear classification on ImageNet")
    a = p.add_argument
    a("--n_last_blocks", default=4, type=int, help="concatenate the CLS tokens of the last n blocks")
    a("--avgpool_patchtokens", default=False, type=bool_flag, help="also concatenate the mean patch token")
    a("--arch", default="vit_s", type=str, choices=["vit_t", "vit_s", "vit_b"])
    a("--patch_size", default=16, type=int)
    a("--pretrained_weights", default="", type=str, help="train.py checkpoint or backbone state dict")
    a("--checkpoint_key", default="auto", type=str,
      help="repo addition: entry to read (auto = backbone > state_dict > model; teacher_backbone, ...)")
    a("--epochs", default=100, type=int)
    a("--lr", default=0.001, type=float, help="lr at batch 256 (scaled by batch_size_per_gpu x world / 256)")
    a("--batch_size_per_gpu", default=128, type=int)
    a("--dist_url", default="env://", type=str)
    a("--local_rank", "--local-rank", dest="local_rank", default=0, type=int)
    a("--data_path", default="synthetic", type=str, help="'synthetic' or a folder with train/ and val/")
    a("--num_workers", default=10, type=int)
    a("--val_freq", default=1, type=int, help="validate at epochs 0, n, 2n, ... and the last one")
    a("--output_dir", default=".", help="the linear run writes to OUTPUT_DIR/linear_vit/ (checkpoint.pth.tar, "
                                        "stats.txt, log.txt)")
    a("--num_labels", default=1000, type=int)
    a("--use_lmdb", default=0, type=int, help="LMDB is not supported here (1 = error)")
    a("--img_size", default=224, type=int, help="repo addition: crop size (224 = the original)")
    a("--max_steps_per_epoch", default=0, type=int, help="repo addition: cap steps per epoch (0 = all)")
    a("--seed", default=0, type=int)
    return p


def last_blocks_features(n: int, avgpool: bool):
    """DINO's ``get_intermediate_layers`` on a timm ViT: run the blocks, keep the normalised outputs of the
    last ``n``; features = concat of their CLS tokens (+ mean of the last one's patch tokens)."""

    def features(vit, x):
        x = vit.patch_embed(x)
        x = vit._pos_embed(x)
        x = vit.patch_drop(x)
        x = vit.norm_pre(x)
        outs = []
        depth = len(vit.blocks)
        for i, blk in enumerate(vit.blocks):
            x = blk(x)
            if depth - i <= n:
                outs.append(vit.norm(x))
        f = torch.cat([o[:, 0] for o in outs], dim=-1)
        if avgpool:
            f = torch.cat([f, outs[-1][:, vit.num_prefix_tokens:].mean(dim=1)], dim=-1)
        return f

    return features


def main_worker(ctx: dist.DistContext, args) -> None:
    from torchvision.transforms import v2 as T

    seed_everything(args.seed, ctx.rank)
    vit = build_backbone(args.arch, img_size=args.img_size, patch_size=args.patch_size)
    if not 1 <= args.n_last_blocks <= len(vit.blocks):
        raise UserError(f"--n_last_blocks must be in 1..{len(vit.blocks)}")
    if args.pretrained_weights:
        load_backbone_weights(vit, args.pretrained_weights if args.checkpoint_key == "auto" else
                              _entry(args.pretrained_weights, args.checkpoint_key), ignore=("head.", "fc."))
        print(f"=> loaded pre-trained weights from '{args.pretrained_weights}'")
    else:
        print("=> no --pretrained_weights: evaluating a randomly initialised ViT")
    feat_dim = vit.embed_dim * (args.n_last_blocks + int(args.avgpool_patchtokens))
    model = Classifier(vit, feat_dim, args.num_labels, freeze=True,
                       features=last_blocks_features(args.n_last_blocks, args.avgpool_patchtokens))
    train_tf = T.Compose([T.RandomResizedCrop(args.img_size, interpolation=BICUBIC), T.RandomHorizontalFlip(),
                          *to_tensor_normalize()])
    val_tf = T.Compose([T.Resize(int(round(args.img_size * 256 / 224)), interpolation=BICUBIC),
                        T.CenterCrop(args.img_size), *to_tensor_normalize()])
    train_ds = build_dataset(args.data_path, "train", train_tf, image_size=args.img_size, seed=args.seed)
    val_ds = build_dataset(args.data_path, "val", val_tf, image_size=args.img_size, seed=args.seed)
    train_loader = build_loader(train_ds, args.batch_size_per_gpu, shuffle=True, drop_last=False,
                                num_workers=args.num_workers, seed=args.seed)
    # every val image counted once over the ranks (DINO's eval_linear ran the whole set on every rank)
    val_loader = build_loader(val_ds, args.batch_size_per_gpu, shuffle=False, drop_last=False,
                              num_workers=args.num_workers, exact_eval=True)
    lr = args.lr * (args.batch_size_per_gpu * ctx.world_size) / 256.0
    run = setup_run(ctx, model, sync_bn=False, ddp=True,
                    make_optimizer=lambda m: torch.optim.SGD(m.fc.parameters(), lr=lr, momentum=0.9,
                                                             weight_decay=0))
    model, wrapped, optimizer = run.model, run.wrapped, run.optimizer
    # the frozen backbone as DDP broadcast it (rank 0's): the sanity check's reference on every rank (taken
    # before setup_run, a rank other than 0 compared rank 0's weights with its own random start and failed)
    reference = {k: v.detach().clone() for k, v in model.backbone.state_dict().items()}
    out_dir = os.path.join(args.output_dir, "linear_vit")
    best = train_classifier(model, wrapped, optimizer, train_loader, val_loader, epochs=args.epochs, out_dir=out_dir,
               ctx=ctx, val_every=args.val_freq, max_steps=args.max_steps_per_epoch or None, print_freq=20,
               reference=reference, desc="vit-linear", ckpt_name="checkpoint.pth.tar")
    print(f"Training of the supervised linear classifier on frozen features completed.\n"
          f"Top-1 test accuracy: {best['best_acc1']:.1f}")


def _entry(path, key):
    from core.engine import load_checkpoint

    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, dict) or key not in ckpt:
        raise UserError(f"'{path}' has no entry '{key}'")
    return ckpt[key]


@cli_main
def main(argv=None) -> None:
    parser = get_parser()
    args = parser.parse_args(argv)
    check_flags(args, parser, {k: v for k, v in NO_EFFECT.items() if k not in LAUNCHER_FLAGS},
                UNSUPPORTED)
    if args.val_freq < 1 or args.epochs < 1:
        raise UserError("--epochs and --val_freq must be positive")
    if args.batch_size_per_gpu < 1:
        raise UserError(f"--batch_size_per_gpu must be positive, got {args.batch_size_per_gpu}")
    for flag, v in (("--num_workers", args.num_workers), ("--max_steps_per_epoch", args.max_steps_per_epoch)):
        if v < 0:
            raise UserError(f"{flag} must be non-negative, got {v}")
    # made here, inside the error wrapper: a bad path is one error line
    os.makedirs(os.path.join(args.output_dir, "linear_vit"), exist_ok=True)
    dist.launch(main_worker, args, dist_url=args.dist_url)


if __name__ == "__main__":
    main()
