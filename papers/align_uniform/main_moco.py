#!/usr/bin/env python
"""Unsupervised pre-training of MoCo with the Alignment and Uniformity losses (SsnL/moco_align_uniform).

    python main_moco.py -a resnet50 --lr 0.03 --batch-size 128 --gpus 0 1 2 3 \
        --multiprocessing-distributed --world-size 1 --rank 0 DIR

Default objective: 3 * L_align(alpha=2) + L_uniform(t=3) (intra-batch form, Eq. 18); see README.md.
"""
from __future__ import annotations

import os

import torch

from core.augment import MultiView, moco_v1, moco_v2
from core.data import build_dataset, build_loader, is_builtin
from core.data.datasets import TORCHVISION_SETS, split_dir
from core.engine import EngineConfig, setup_run, train
from core.errors import UserError, cli_main
from core.flags import check_flags

from au_lib import launch
from au_lib.builder import MoCo
from au_lib.config import epoch_lr, moco_parser, optimize_line, resolve_loss_terms
from au_lib.nets import check_has_fc, net_constructor

# Flags accepted with no effect (one warning line for a non-default value) / that cannot work here (one-line
# error); README "Flag surface" lists the same entries. Every flag of this script is used.
NO_EFFECT: dict = {}
UNSUPPORTED: dict = {}


def check_args(args) -> None:
    if args.moco_k <= 0 or args.moco_dim <= 0:
        raise UserError("--moco-k and --moco-dim must be positive")
    if not 0 <= args.moco_m <= 1:
        raise UserError(f"--moco-m must be in [0, 1], got {args.moco_m}")
    if args.moco_contr_w == 0 and args.moco_align_w == 0 and args.moco_unif_w == 0:
        raise UserError("all loss weights are zero (--moco-contr-w/--moco-align-w/--moco-unif-w): nothing to optimise")
    if args.moco_contr_w != 0 and args.moco_contr_tau <= 0:
        raise UserError(f"--moco-contr-tau must be positive, got {args.moco_contr_tau}")
    if args.moco_unif_w != 0 and args.moco_unif_t <= 0:
        raise UserError(f"--moco-unif-t must be positive, got {args.moco_unif_t}")
    if args.moco_align_w != 0 and args.moco_align_alpha <= 0:
        raise UserError(f"--moco-align-alpha must be positive, got {args.moco_align_alpha}")
    if args.mlp:
        check_has_fc(args.arch)
    if not is_builtin(args.data) and args.data.partition(":")[0].lower() not in TORCHVISION_SETS:
        split_dir(args.data, "train")
    if args.resume and not os.path.isfile(args.resume):
        raise UserError(f"no checkpoint found at '{args.resume}'")


@cli_main
def main(argv=None) -> None:
    parser = moco_parser()
    args = parser.parse_args(argv)
    check_flags(args, parser, NO_EFFECT, UNSUPPORTED)
    check_args(args)
    terms = resolve_loss_terms(args)  # zero weights -> None, before the batch is divided
    args.save_folder = os.path.join(args.results_dir, "_".join(terms))
    launch.prepare(args)
    gb = launch.global_batch(args)
    if args.moco_k % gb != 0:
        raise UserError(f"--moco-k {args.moco_k} must be a multiple of the global batch size {gb}")
    os.makedirs(args.save_folder, exist_ok=True)  # here, inside cli_main: a bad path is one error line
    launch.run(main_worker, args)


def two_crops(aug_plus: bool, size: int) -> MultiView:
    """``TwoCropsTransform``: the same pipeline applied twice; MoCo v1 by default, v2 with ``--aug-plus``."""
    aug = moco_v2(size) if aug_plus else moco_v1(size)
    return MultiView([aug, aug])


def build_model(args) -> MoCo:
    return MoCo(net_constructor(args.arch), args.moco_dim, args.moco_k, args.moco_m,
                contr_tau=args.moco_contr_tau, align_alpha=args.moco_align_alpha, unif_t=args.moco_unif_t,
                unif_intra_batch=not args.moco_unif_no_intra_batch, mlp=args.mlp,
                contr_w=args.moco_contr_w, align_w=args.moco_align_w, unif_w=args.moco_unif_w)


def main_worker(ctx, args) -> None:
    launch.worker_setup(ctx, args)
    print(f"=> creating model '{args.arch}'")
    model = build_model(args)
    print(optimize_line(args))
    # device -> DDP (broadcasts rank 0's weights, encoder_k and the queue included) -> SGD over
    # model.parameters() as the original (encoder_k gets no gradient, so SGD leaves it to the momentum update)
    run = setup_run(ctx, model, make_optimizer=lambda m: torch.optim.SGD(
        m.parameters(), args.lr, momentum=args.momentum, weight_decay=args.weight_decay))
    model, wrapped, optimizer = run.model, run.wrapped, run.optimizer

    dataset = build_dataset(args.data, "train", two_crops(args.aug_plus, args.image_size), image_size=args.image_size,
                            num_samples=args.num_samples, seed=args.seed or 0)
    loader = build_loader(dataset, args.batch_size, shuffle=True, drop_last=True, num_workers=args.workers,
                          seed=args.seed or 0)
    steps_per_epoch = min(len(loader), args.max_steps) if args.max_steps else len(loader)

    def set_epoch_lr(step, total_steps):
        if step % max(steps_per_epoch, 1) == 0:  # once per epoch, at its start
            lr = epoch_lr(args.lr, step // steps_per_epoch, args.epochs, args.schedule, args.cos)
            for group in optimizer.param_groups:
                group["lr"] = lr

    def diagnostics(epoch):
        """Collapse / alignment / uniformity diagnostics of the core on the last step's (q, k), main rank."""
        if model.last_qk is None or not ctx.is_main:
            return {}
        from core.eval import collapse_metrics  # lazy: spares every other rank the sklearn/scipy import

        q, k = model.last_qk
        return collapse_metrics(q, k, prefix="diag_")

    cfg = EngineConfig(epochs=args.epochs, output_dir=args.save_folder, start_epoch=args.start_epoch,
                       amp=args.amp, print_freq=args.print_freq, ckpt_names=("checkpoint_{epoch:04d}.pth.tar",),
                       model_key="state_dict", model_prefix="module.", resume=args.resume,
                       max_steps_per_epoch=args.max_steps, desc="moco")
    print(f"=> saving to {args.save_folder}")
    train(wrapped, optimizer, loader, cfg, ctx, before_step=set_epoch_lr, end_epoch=diagnostics,
          extra_state=lambda epoch: {"arch": args.arch})


if __name__ == "__main__":
    main()
