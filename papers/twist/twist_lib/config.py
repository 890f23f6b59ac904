"""``train.py``'s argument parser: every flag and default of the original ``get_args_parser`` (spec 2), plus
the README's underscore spellings ``--weight_decay`` / ``--weight_decay_end`` and two repo additions
(``--max_steps_per_epoch``, ``--num_samples``) for short runs."""
from __future__ import annotations

import argparse

# counts that must not be negative (one-line error in train.py)
NON_NEGATIVE = ("mme_epochs", "sl_warmup_epochs", "start_epoch", "max_steps_per_epoch", "num_samples",
                "local_crops_number", "num_workers")

BACKBONE_CHOICES = ("resnet50", "resnet50w2", "resnet50w4", "resnet50w5", "resnet18", "resnet_tiny",
                    "vit_t", "vit_s", "vit_b")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("TWIST", add_help=True)
    a = p.add_argument
    a("--dataset", type=str, default="imagenet", help="unused (kept from the original)")
    a("--lam1", type=float, default=0.0, help="sharpness weight offset: mean entropy is weighted by 1 + lam1")
    a("--lam2", type=float, default=1.0, help="diversity weight: entropy of the mean is weighted by -lam2")
    a("--tau", type=float, default=1.0, help="softmax temperature of the sharpness/diversity terms")
    a("--lbn_type", type=str, default="bn", choices=["bn", "syncbn", "identity"],
      help="logit BN: bn = stats over a bunch of ranks, syncbn = all ranks, identity = none")
    a("--determine", type=int, default=0, help="1: deterministic cuDNN and seeding with seed + rank")
    a("--aug", type=str, default="multicrop", choices=["moco", "barlow", "multicrop", "rand"],
      help="augmentation set")
    a("--img_size", type=int, default=224, help="crop size (global crop size of multicrop too, see README)")
    a("--drop", type=float, default=0.0, help="dropout after the head's first hidden layer")
    a("--clip_norm", type=float, default=0.0,
      help="clip the gradient norm when > 0, with --amp 1 (the original clips in its GradScaler branch)")
    a("--EPS", type=float, default=1e-5, help="epsilon inside the logs of the loss")
    a("--reduce_mean", type=float, default=0, help="unused (kept from the original)")
    a("--eval_only", "--eval-only", dest="eval_only", type=int, default=0,
      help="1: clustering evaluation of --resume on the val split, then exit")
    a("--inference_only", type=int, default=0, help="1: top-10 classes of --img_path via --match_path")
    a("--img_path", type=str, default="./test.jpg", help="image (or val index) for --inference_only")
    a("--match_path", type=str, default="", help="match.npy written by --eval_only")
    a("--threshold", type=float, default=0.0, help="fixed self-labeling threshold (used when quantile is 0)")
    a("--quantile", type=float, default=0.5, help="start of the cosine schedule of the pseudo-labelled fraction")
    a("--quantile_end", type=float, default=0.6, help="end of that schedule")
    a("--enable_watch", type=int, default=1, help="NMI/AMI/ARI/FMI of training predictions every epoch")
    a("--use_momentum_encoder", type=int, default=0, help="1: EMA teacher on the global crops")
    a("--momentum_start", type=float, default=0.996)
    a("--momentum_end", type=float, default=1.0)
    a("--freeze_embedding", type=int, default=0, help="ViT: freeze the patch embedding")
    a("--mme_epochs", type=int, default=800, help="epochs with the TWIST loss; later epochs self-label")
    a("--sl_warmup_epochs", type=int, default=5, help="lr warm-up epochs at the start of self-labeling")
    a("--lr_sl", type=float, default=0.05, help="base lr of self-labeling (scaled by global batch / 256)")
    a("--act", type=str, default="relu", help="head activation: relu, anything else = GELU")
    a("--patch-size", dest="patch_size", type=int, default=16, help="ViT patch size")
    a("--backbone", type=str, default="resnet50", help=f"one of {', '.join(BACKBONE_CHOICES)}")
    a("--weight-decay", "--weight_decay", dest="weight_decay", type=float, default=1.5e-6,
      help="initial weight decay of the weights group (default 1.5e-6)")
    a("--weight-decay-end", "--weight_decay_end", dest="weight_decay_end", type=float, default=1.5e-6,
      help="final weight decay of the cosine schedule")
    a("--optim", type=str, default="lars", choices=["lars", "lars_oss", "sgd", "admw"])
    a("--lr", type=float, default=0.5, help="base lr, scaled to lr * batch * world / 256")
    a("--proj_trunc_init", type=int, default=0, help="1: trunc-normal(0.02) init of the head (always for ViT)")
    a("--proj_norm", type=str, default="bn", choices=["bn", "ln", "none"])
    a("--drop_path", type=float, default=0.0, help="ViT stochastic depth rate")
    a("--local_crops_number", type=int, default=12, help="number of local crops (multicrop only)")
    a("--crops_interact_style", type=str, default="sparse", choices=["sparse", "self_label"])
    a("--min1", type=float, default=0.4, help="global crop scale min")
    a("--max1", type=float, default=1.0, help="global crop scale max")
    a("--min2", type=float, default=0.05, help="local crop scale min")
    a("--max2", type=float, default=0.4, help="local crop scale max")
    a("--batch-size", dest="batch_size", type=int, default=128, help="per-process batch")
    a("--bunch-size", dest="bunch_size", type=int, default=256,
      help="samples (over a group of ranks) behind the logit BN statistics")
    a("--epochs", type=int, default=850)
    a("--dim", type=int, default=4096, help="number of output classes C")
    a("--hid_dim", type=int, default=4096, help="hidden width of the head")
    a("--exclude-bias-weight-decay", dest="exclude_bias_weight_decay", type=int, default=1,
      help="1: no weight decay on biases / 1-D / pos_embed / cls_token / dist_token")
    a("--sched", type=str, default="cosine", help="unused (kept from the original)")
    a("--lr_wbr", type=float, default=1.0, help="lr divisor of the bias group")
    a("--warmup-epochs", dest="warmup_epochs", type=int, default=10,
      help="overwritten: 3 if epochs <= 20, 5 if <= 50, else 10 (as the original)")
    a("--data-path", dest="data_path", type=str, default="synthetic",
      help="'synthetic' (built-in), cifar10[:ROOT], cifar100[:ROOT], stl10[:ROOT] or DIR with train/ and val/")
    a("--output_dir", type=str, default="", help="output folder ('' = current folder)")
    a("--device", type=str, default="cuda",
      help="cuda (GPU of the local rank; CPU + gloo without a GPU), cuda:N (one process) or cpu")
    a("--seed", type=int, default=0)
    a("--resume", type=str, default="", help="checkpoint to resume from (or to evaluate)")
    a("--start_epoch", type=int, default=0)
    a("--num_workers", type=int, default=10)
    a("--pin-mem", dest="pin_mem", action="store_true")
    a("--no-pin-mem", dest="pin_mem", action="store_false")
    p.set_defaults(pin_mem=True)
    a("--use-lmdb", dest="use_lmdb", action="store_true", help="not supported here (error)")
    a("--amp", type=int, default=1,
      help="1: fp16 autocast + GradScaler on CUDA, and --clip_norm clipping (also on CPU)")
    a("--world_size", type=int, default=1, help="overwritten by the launcher's WORLD_SIZE")
    a("--dist_url", type=str, default="env://")
    # launcher and repo additions
    a("--local_rank", "--local-rank", dest="local_rank", type=int, default=None, help=argparse.SUPPRESS)
    a("--max_steps_per_epoch", type=int, default=0, help="repo addition: cap steps per epoch (0 = all)")
    a("--num_samples", type=int, default=0, help="repo addition: size of the synthetic set (0 = default)")
    return p
