"""SimSiam / RDM-SimSiam ImageNet pretraining (``imagenet/main_simsiam.py`` of the RDM repository).

Every flag and default of the original (spec §3a). Ours: ``--rdm-guard``, ``--output-dir`` (default
``.``, where the original writes checkpoints), ``--image-size`` (224), ``--max-steps-per-epoch``.
The loop is :func:`core.engine.train` (fp32 as the original, no AMP); launch is :mod:`core.dist`.
"""
import os

import torch

from core import dist
from core.augment import MultiView, moco_v2
from core.data import build_dataset, build_loader, seed_everything
from core.engine import EngineConfig, setup_run, train
from core.errors import UserError, cli_main
from core.flags import check_flags
from core.optim import cosine_epoch_lr
from rdm_lib.diagnostics import RankMonitor
from rdm_lib.imagenet_args import simsiam_parser
from rdm_lib.models import ImageNetSimSiam
from rdm_lib.run_utils import guard_hint


# accepted with no effect (one warning line when set): dest -> reason
NO_EFFECT = {
    "local_rank": "accepted for torch.distributed.launch; the local rank comes from LOCAL_RANK (the original "
                  "has no such flag)",
}
# a non-default value stops with a one-line error: dest -> reason
UNSUPPORTED = {}


def run(ctx, args):
    if args.seed is not None:
        seed_everything(args.seed, ctx.rank)
    nprocs = max(1, ctx.world_size // max(1, args.world_size if args.world_size > 0 else 1))
    batch = args.batch_size
    if args.multiprocessing_distributed:  # the original floors -b / procs; one warning line (main rank)
        batch = dist.per_process_batch(batch, nprocs, warn=ctx.is_main)
    workers = (args.workers + nprocs - 1) // nprocs if args.multiprocessing_distributed else args.workers
    if batch < 2:
        raise UserError(f"batch size per process is {batch}; use -b of at least 2 per process")
    model = ImageNetSimSiam(args.arch, args.dim, args.pred_dim, args.pred_type, args.pred_location, args.sigma,
                            guard=args.rdm_guard)
    init_lr = args.lr * args.batch_size / 256  # infer learning rate before changing batch size

    def make_optimizer(m):
        if args.fix_pred_lr:
            params = [{"params": m.encoder.parameters(), "fix_lr": False},
                      {"params": m.predictor.parameters(), "fix_lr": True}]
        else:
            params = m.parameters()
        return torch.optim.SGD(params, init_lr, momentum=args.momentum, weight_decay=args.weight_decay)

    # the original converts BN to SyncBatchNorm before DDP
    setup = setup_run(ctx, model, make_optimizer=make_optimizer, sync_bn=True)
    inner, wrapped, optimizer = setup.model, setup.wrapped, setup.optimizer

    train_ds = build_dataset(args.data, "train", MultiView([moco_v2(args.image_size)] * 2),
                             image_size=args.image_size)
    loader = build_loader(train_ds, batch, shuffle=True, drop_last=True, num_workers=workers,
                          seed=args.seed or 0)
    spe = min(len(loader), args.max_steps_per_epoch or len(loader))

    def before_step(step, total):  # adjust_learning_rate, once per epoch (cosine, no warmup)
        if step % spe == 0:
            lr = cosine_epoch_lr(init_lr, step // spe, args.epochs)
            for g in optimizer.param_groups:
                g["lr"] = init_lr if g.get("fix_lr", False) else lr

    monitor = RankMonitor(lambda: inner, args.output_dir, ctx.is_main,
                          title=f"{args.pred_type} {args.pred_location} sigma={args.sigma}")
    cfg = EngineConfig(epochs=args.epochs, output_dir=args.output_dir, start_epoch=args.start_epoch, amp="off",
                       print_freq=args.print_freq, ckpt_names=("checkpoint_{epoch:04d}.pth.tar",),
                       model_key="state_dict", model_prefix="module.", resume=args.resume,
                       max_steps_per_epoch=args.max_steps_per_epoch, desc="simsiam")
    with guard_hint(args.pred_type != "mlp" and not args.rdm_guard, "--rdm-guard"):
        train(wrapped, optimizer, loader, cfg, ctx, before_step=before_step, after_step=monitor.after_step,
              end_epoch=monitor.end_epoch, extra_state=lambda epoch: {"arch": args.arch})


def check_args(args) -> None:
    """One-line errors for values the original would take and then do nothing (or loop) with."""
    for flag, v in (("--epochs", args.epochs), ("--start-epoch", args.start_epoch)):
        if v < 0:
            raise UserError(f"{flag} must be non-negative, got {v}")
    if args.max_steps_per_epoch is not None and args.max_steps_per_epoch < 1:
        raise UserError(f"--max-steps-per-epoch must be at least 1, got {args.max_steps_per_epoch}")


@cli_main
def main(argv=None):
    parser = simsiam_parser()
    args = parser.parse_args(argv)
    check_flags(args, parser, NO_EFFECT, UNSUPPORTED)
    check_args(args)
    os.makedirs(args.output_dir, exist_ok=True)  # an unusable output path is a one-line error, before launch
    dist.launch_from_args(run, args)


if __name__ == "__main__":
    main()
