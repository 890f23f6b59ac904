"""solo-learn ``main_linear.py`` + ``solo/methods/linear.py`` (``LinearModel``): offline linear evaluation of a
pretrained backbone (ImageNet-100 scripts, spec §4d).

The frozen backbone runs in eval mode under ``no_grad`` (``training_step`` calls ``backbone.eval()``); one
``classifier = Linear(F, classes)`` (PyTorch default init) is trained with cross-entropy. Flags and defaults
are solo's linear parser: ``--optimizer`` required (sgd / lars / adam / adamw; sgd and lars with momentum
0.9), ``--lr`` 0.3 scaled by batch x devices x nodes / 256, ``--weight_decay`` 1e-4, ``--scheduler`` reduce
(which stops the original: Lightning requires a monitor for ``ReduceLROnPlateau``, so it is a one-line error
here), warmup_cosine (per step), step (``MultiStepLR``, gamma 0.1, per epoch), exponential
(``ExponentialLR(gamma=weight_decay)``, per epoch) or none. The loop is :func:`core.engine.train`: fp16 AMP
with a GradScaler for ``--precision 16`` on CUDA (fp32 on the CPU), a checkpoint ``<name>.ckpt`` only with
``--save_checkpoint`` (every ``--checkpoint_frequency`` epochs), ``--resume_from_checkpoint`` /
``--auto_resume``. The pretraining checkpoint's ``state_dict`` is read as solo does: ``encoder`` renamed
``backbone``, ``backbone.*`` kept. Validation counts every image once over the ranks.
"""
import argparse
import copy
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from core import dist
from core.data import build_loader, seed_everything
from core.engine import EngineConfig, load_checkpoint, setup_run, train
from core.errors import UserError, cli_main
from core.eval.linear import accuracy, sanity_check
from core.flags import check_flags
from core.optim import LARS, step_lr, warmup_cosine
from rdm_lib.models import solo_backbone
from rdm_lib.run_utils import launch_solo
from rdm_lib.solo_args import (NO_EFFECT_COMMON, NUM_CLASSES, UNSUPPORTED_COMMON, add_dataset_args,
                               add_logging_args, add_trainer_args, check_epochs)
from rdm_lib.solo_data import linear_train_transform, num_classes_of, solo_dataset, val_transform
from rdm_lib.solo_train import AMP

LINEAR_SCHEDULERS = ("reduce", "warmup_cosine", "step", "exponential", "none")  # LinearModel._SCHEDULERS

# accepted with no effect (one warning line when set): dest -> reason
NO_EFFECT = {
    **NO_EFFECT_COMMON,
    "sync_batchnorm": "the frozen backbone stays in eval mode, so BN uses its running statistics (SyncBN "
                      "changes nothing, in the original too)",
    "classifier_lr": "LinearModel trains the classifier with --lr (the original ignores it too)",
}
# a non-default value stops with a one-line error: dest -> reason
UNSUPPORTED = {**UNSUPPORTED_COMMON}


def build_parser():
    p = argparse.ArgumentParser(description="solo-learn linear evaluation")
    add_trainer_args(p)
    add_dataset_args(p)
    add_logging_args(p)
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--pretrained_feature_extractor", required=True, help="pretraining checkpoint (.ckpt)")
    p.add_argument("--optimizer", choices=("sgd", "lars", "adam", "adamw"), required=True)
    p.add_argument("--lr", type=float, default=0.3)
    p.add_argument("--classifier_lr", type=float, default=0.3)
    p.add_argument("--weight_decay", type=float, default=0.0001)
    p.add_argument("--exclude_bias_n_norm", action="store_true", help="lars: no adaptation/decay of 1-d params")
    p.add_argument("--scheduler", choices=LINEAR_SCHEDULERS, default="reduce")
    p.add_argument("--lr_decay_steps", type=int, nargs="+", default=None)
    p.add_argument("--min_lr", type=float, default=0.0)
    p.add_argument("--warmup_start_lr", type=float, default=0.003)
    p.add_argument("--warmup_epochs", type=int, default=10)
    p.add_argument("--crop_size", type=int, default=None, help="(ours) 32 on CIFAR, 224 otherwise")
    p.add_argument("--seed", type=int, default=5, help="(ours) the original does not seed main_linear.py")
    return p


class SoloLinear(nn.Module):
    """``LinearModel``: state-dict keys ``backbone.*`` / ``classifier.*`` as the original's checkpoints.
    ``forward(batch) -> (loss, logs)`` for :func:`core.engine.train`."""

    def __init__(self, backbone: nn.Module, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.classifier = nn.Linear(backbone.feat_dim, num_classes)
        for p in self.backbone.parameters():
            p.requires_grad = False

    def logits(self, x):
        with torch.no_grad():
            feats = self.backbone(x)
        return self.classifier(feats)

    def forward(self, batch):
        x, y = batch
        self.backbone.eval()  # training_step: "set backbone to eval mode"
        out = self.logits(x)
        loss = F.cross_entropy(out, y)
        acc1, acc5 = accuracy(out.detach(), y, (1, 5))
        return loss, {"acc1": acc1.float() * (100.0 / y.shape[0]), "acc5": acc5.float() * (100.0 / y.shape[0])}


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


def build_optimizer(args, params, lr: float):
    """``LinearModel.configure_optimizers`` with ``additional_setup_linear``'s extra args."""
    if args.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=args.weight_decay, momentum=0.9)
    if args.optimizer == "lars":  # solo LARS defaults: eta 1e-3, no lr clipping
        return LARS(params, lr=lr, weight_decay=args.weight_decay, momentum=0.9, eta=1e-3, clip=False,
                    exclude_1d=args.exclude_bias_n_norm, mode="solo")
    if args.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=args.weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=args.weight_decay)


def lr_at(args, lr: float, step: int, total: int, steps_per_epoch: int) -> float:
    """The lr of optimizer step ``step`` under ``--scheduler`` (Lightning: 'step' interval for warmup_cosine,
    'epoch' for step and exponential)."""
    epoch = step // steps_per_epoch
    if args.scheduler == "warmup_cosine":  # LinearWarmupCosineAnnealingLR over optimizer steps
        start = args.warmup_start_lr if args.warmup_epochs > 0 else lr
        return warmup_cosine(step, total, args.warmup_epochs * steps_per_epoch, lr, start, args.min_lr)
    if args.scheduler == "step":
        return step_lr(lr, epoch, args.lr_decay_steps, 0.1)
    if args.scheduler == "exponential":  # ExponentialLR(optimizer, self.weight_decay)
        return lr * args.weight_decay ** epoch
    return lr


def run_dir(args) -> str:
    return os.path.join(args.checkpoint_dir, "linear", args.name)


def run(ctx, args):
    seed_everything(args.seed, ctx.rank)
    size = args.crop_size or (32 if args.dataset in ("cifar10", "cifar100") else 224)
    train_ds = solo_dataset(args.dataset, args.data_dir, args.train_dir, "train",
                            linear_train_transform(args.dataset, size), size, args.num_samples)
    val_ds = solo_dataset(args.dataset, args.data_dir, args.val_dir, "val", val_transform(args.dataset, size), size)
    num_classes = num_classes_of(train_ds, args.dataset, NUM_CLASSES)
    backbone = solo_backbone(args.backbone, args.dataset in ("cifar10", "cifar100"))
    load_solo_backbone(backbone, args.pretrained_feature_extractor)
    reference = copy.deepcopy(backbone.state_dict())
    model = SoloLinear(backbone, num_classes)
    lr = args.lr * args.batch_size * ctx.world_size / 256  # batch x devices x nodes / 256
    setup = setup_run(ctx, model, make_optimizer=lambda m: build_optimizer(args, m.classifier.parameters(), lr))
    inner, wrapped, optimizer = setup.model, setup.wrapped, setup.optimizer
    train_loader = build_loader(train_ds, args.batch_size, shuffle=True, drop_last=True,
                                num_workers=args.num_workers, seed=args.seed)
    val_loader = build_loader(val_ds, args.batch_size, shuffle=False, drop_last=False,
                              num_workers=args.num_workers, exact_eval=True)
    spe = len(train_loader)
    if args.max_steps_per_epoch:
        spe = min(spe, args.max_steps_per_epoch)
    spe = max(1, spe)

    def before_step(step, total):
        for g in optimizer.param_groups:
            g["lr"] = lr_at(args, lr, step, total, spe)

    checked = []

    def end_epoch(epoch):
        inner.eval()
        sums = torch.zeros(4, device=ctx.device)
        with torch.no_grad():
            for i, (x, y) in enumerate(val_loader):
                if args.max_steps_per_epoch and i >= args.max_steps_per_epoch:
                    break
                x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
                out = inner.logits(x)
                c1, c5 = accuracy(out, y, (1, 5))
                sums += torch.stack([F.cross_entropy(out, y, reduction="sum"), c1.float(), c5.float(),
                                     torch.full((), float(y.shape[0]), device=ctx.device)])
        if dist.is_dist():
            torch.distributed.all_reduce(sums)  # sums and counts: each validation image counted once
        inner.train()
        loss, c1, c5, n = sums.tolist()
        n = max(n, 1.0)
        if not checked and ctx.is_main:  # the backbone must be unchanged by linear training
            sanity_check(inner.backbone.state_dict(), reference, ignore=())
            checked.append(True)
        return {"val_loss": loss / n, "val_acc1": 100 * c1 / n, "val_acc5": 100 * c5 / n}

    out_dir = run_dir(args)
    resume = args.resume_from_checkpoint or ("auto" if args.auto_resume else "")
    names = (f"{args.name}.ckpt",) if args.save_checkpoint else ()  # no Checkpointer without the flag
    cfg = EngineConfig(epochs=args.max_epochs, output_dir=out_dir, amp=AMP.get(str(args.precision), "off"),
                       ckpt_names=names, model_key="state_dict", resume=resume,
                       max_steps_per_epoch=args.max_steps_per_epoch, desc=args.name,
                       save_every=args.checkpoint_frequency)
    hist = train(wrapped, optimizer, train_loader, cfg, ctx, before_step=before_step, end_epoch=end_epoch,
                 extra_state=lambda epoch: {"args": {k: v for k, v in vars(args).items()}})
    if hist:
        h = hist[-1]
        print(f"val_acc1 {h['val_acc1']:.3f} val_acc5 {h['val_acc5']:.3f}")


def check_args(args) -> None:
    if args.scheduler == "reduce":
        raise UserError("--scheduler reduce (the default) stops the original too: Lightning requires a monitor "
                        "for ReduceLROnPlateau; pass --scheduler step, warmup_cosine, exponential or none")
    if args.scheduler == "step" and not args.lr_decay_steps:
        raise UserError("--scheduler step needs --lr_decay_steps (the original's MultiStepLR fails without it)")
    if args.batch_size < 1:
        raise UserError(f"--batch_size must be at least 1, got {args.batch_size}")
    check_epochs(vars(args))


@cli_main
def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    check_flags(args, parser, NO_EFFECT, UNSUPPORTED)
    check_args(args)
    os.makedirs(run_dir(args), exist_ok=True)  # an unusable output path is a one-line error, before launch
    launch_solo(run, args)


if __name__ == "__main__":
    main()
