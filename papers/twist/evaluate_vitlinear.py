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
from core.errors import UserError, cli_main
from core.eval import load_backbone_weights
from core.eval.finetune import Classifier, train_classifier


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

    if args.use_lmdb:
        raise UserError("--use_lmdb 1 is not supported in this repo: pass an ImageFolder tree or 'synthetic'")
    seed_everything(args.seed, ctx.rank)
    vit = build_backbone(args.arch, img_size=args.img_size, patch_size=args.patch_size)
    if not 1 <= args.n_last_blocks <= len(vit.blocks):
        raise UserError(f"--n_last_blocks must be in 1..{len(vit.blocks)}")
    reference = None
    if args.pretrained_weights:
        load_backbone_weights(vit, args.pretrained_weights if args.checkpoint_key == "auto" else
                              _entry(args.pretrained_weights, args.checkpoint_key), ignore=("head.", "fc."))
        print(f"=> loaded pre-trained weights from '{args.pretrained_weights}'")
    else:
        print("=> no --pretrained_weights: evaluating a randomly initialised ViT")
    reference = {k: v.detach().clone() for k, v in vit.state_dict().items()}
    feat_dim = vit.embed_dim * (args.n_last_blocks + int(args.avgpool_patchtokens))
    model = Classifier(vit, feat_dim, args.num_labels, freeze=True,
                       features=last_blocks_features(args.n_last_blocks, args.avgpool_patchtokens))
    model = model.to(ctx.device)
    train_tf = T.Compose([T.RandomResizedCrop(args.img_size, interpolation=BICUBIC), T.RandomHorizontalFlip(),
                          *to_tensor_normalize()])
    val_tf = T.Compose([T.Resize(int(round(args.img_size * 256 / 224)), interpolation=BICUBIC),
                        T.CenterCrop(args.img_size), *to_tensor_normalize()])
    train_ds = build_dataset(args.data_path, "train", train_tf, image_size=args.img_size, seed=args.seed)
    val_ds = build_dataset(args.data_path, "val", val_tf, image_size=args.img_size, seed=args.seed)
    train_loader = build_loader(train_ds, args.batch_size_per_gpu, shuffle=True, drop_last=False,
                                num_workers=args.num_workers, seed=args.seed)
    val_loader = build_loader(val_ds, args.batch_size_per_gpu, shuffle=False, drop_last=False,
                              num_workers=args.num_workers)
    lr = args.lr * (args.batch_size_per_gpu * ctx.world_size) / 256.0
    optimizer = torch.optim.SGD(model.fc.parameters(), lr=lr, momentum=0.9, weight_decay=0)
    wrapped = dist.wrap_ddp(model, ctx)
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
    args = get_parser().parse_args(argv)
    if args.val_freq < 1 or args.epochs < 1:
        raise UserError("--epochs and --val_freq must be positive")
    dist.launch(main_worker, args, dist_url=args.dist_url)


if __name__ == "__main__":
    main()
