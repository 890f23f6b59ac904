"""Linear classification on frozen features (``imagenet/main_lincls.py``, unchanged official SimSiam).

Every flag and default of the original (spec §3c-3d): batch 4096, base lr 0.1 (init_lr = lr * b / 256),
90 epochs, per-epoch cosine, SGD or ``--lars`` = apex ``LARC(trust_coefficient=0.001, clip=False)`` via
:class:`core.optim.LARS` (mode ``larc``), frozen BN, ``fc ~ N(0, 0.01)``, the backbone sanity check.
The loop is :func:`core.eval.run_linear_eval`. Ours: ``--output-dir``, ``--image-size``,
``--max-steps-per-epoch``.
"""
import copy
import os

import torch

from core import dist
from core.augment import eval_transform, linear_train_transform
from core.data import build_dataset, build_loader, seed_everything
from core.engine import load_checkpoint, setup_run
from core.errors import UserError, cli_main
from core.flags import check_flags
from core.eval import LinearEvalConfig, freeze_all_but, init_linear_head, run_linear_eval
from core.optim import LARS, cosine_epoch_lr
from rdm_lib.imagenet_args import lincls_parser
from rdm_lib.models import imagenet_encoder


def load_pretrained(model, path: str) -> None:
    """Keep ``module.encoder.*`` except ``module.encoder.fc.*``; only fc.weight / fc.bias may be missing."""
    if not os.path.isfile(path):
        raise UserError(f"no checkpoint found at '{path}'")
    print(f"=> loading checkpoint '{path}'")
    ckpt = load_checkpoint(path)
    if "state_dict" not in ckpt:
        raise UserError(f"'{path}' has no 'state_dict' (keys: {sorted(ckpt)[:6]})")
    sd = {k[len("module.encoder."):]: v for k, v in ckpt["state_dict"].items()
          if k.startswith("module.encoder") and not k.startswith("module.encoder.fc")}
    try:
        msg = model.load_state_dict(sd, strict=False)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        raise UserError(f"'{path}' (arch {ckpt.get('arch', '?')}) does not fit this -a: "
                        f"{lines[1] if len(lines) > 1 else lines[0]}") from None
    if set(msg.missing_keys) != {"fc.weight", "fc.bias"} or msg.unexpected_keys:
        raise UserError(f"'{path}' is not a SimSiam encoder checkpoint for this arch: missing "
                        f"{msg.missing_keys[:4]}, unexpected {msg.unexpected_keys[:4]}")
    print(f"=> loaded pre-trained model '{path}'")


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
    model = imagenet_encoder(args.arch)
    freeze_all_but(model, ("fc.weight", "fc.bias"))
    init_linear_head(model.fc)
    start_epoch = args.start_epoch
    if args.pretrained:
        load_pretrained(model, args.pretrained)
        start_epoch = 0  # the original sets args.start_epoch = 0 after loading the pre-trained weights
    reference = copy.deepcopy(model.state_dict()) if args.pretrained else None
    init_lr = args.lr * args.batch_size / 256

    def make_optimizer(m):
        parameters = [p for p in m.parameters() if p.requires_grad]
        assert len(parameters) == 2  # fc.weight, fc.bias
        if args.lars:
            return LARS(parameters, init_lr, momentum=args.momentum, weight_decay=args.weight_decay,
                        eta=0.001, clip=False, mode="larc")
        return torch.optim.SGD(parameters, init_lr, momentum=args.momentum, weight_decay=args.weight_decay)

    setup = setup_run(ctx, model, make_optimizer=make_optimizer, sync_bn=False)
    wrapped, optimizer = setup.wrapped, setup.optimizer

    nprocs = max(1, ctx.world_size // max(1, args.world_size if args.world_size > 0 else 1))
    batch = args.batch_size
    if args.multiprocessing_distributed:  # the original floors -b / procs; one warning line (main rank)
        batch = dist.per_process_batch(batch, nprocs, warn=ctx.is_main)
    workers = (args.workers + nprocs - 1) // nprocs if args.multiprocessing_distributed else args.workers
    train_ds = build_dataset(args.data, "train", linear_train_transform(args.image_size),
                             image_size=args.image_size)
    val_ds = build_dataset(args.data, "val", eval_transform(args.image_size), image_size=args.image_size)
    train_loader = build_loader(train_ds, batch, shuffle=True, drop_last=False, num_workers=workers,
                                seed=args.seed or 0)
    val_loader = build_loader(val_ds, 256, shuffle=False, drop_last=False, num_workers=workers,
                              exact_eval=True)
    cfg = LinearEvalConfig(epochs=args.epochs, output_dir=args.output_dir, arch=args.arch,
                           start_epoch=start_epoch, print_freq=args.print_freq, resume=args.resume,
                           evaluate=args.evaluate, max_steps_per_epoch=args.max_steps_per_epoch)
    res = run_linear_eval(wrapped, optimizer, train_loader, val_loader, cfg, ctx,
                          lr_at_epoch=lambda e: cosine_epoch_lr(init_lr, e, args.epochs),
                          reference_state=reference)
    print(f"best Acc@1 {res['best_acc1']:.3f}")


def check_args(args) -> None:
    for flag, v in (("--epochs", args.epochs), ("--start-epoch", args.start_epoch)):
        if v < 0:
            raise UserError(f"{flag} must be non-negative, got {v}")


@cli_main
def main(argv=None):
    parser = lincls_parser()
    args = parser.parse_args(argv)
    check_flags(args, parser, NO_EFFECT, UNSUPPORTED)
    check_args(args)
    os.makedirs(args.output_dir, exist_ok=True)  # an unusable output path is a one-line error, before launch
    dist.launch_from_args(run, args)


if __name__ == "__main__":
    main()
