#!/usr/bin/env python
"""Linear classification on frozen MoCo features (``main_lincls.py`` of SsnL/moco_align_uniform).

    python main_lincls.py -a resnet50 --lr 30.0 --batch-size 256 --pretrained CKPT \
        --multiprocessing-distributed --world-size 1 --rank 0 DIR

Only the ``module.encoder_q.*`` weights of the pre-training checkpoint are kept (its ``fc`` / MLP head is
dropped); the backbone stays frozen in eval mode (BN statistics frozen) and only ``fc`` is trained.
"""
from __future__ import annotations

import os

import torch
from torch.utils.data import DataLoader, SequentialSampler

from core.augment import eval_transform, linear_train_transform
from core.data import build_dataset, build_loader, is_builtin
from core.data.datasets import TORCHVISION_SETS, split_dir
from core.engine import load_checkpoint, setup_run
from core.eval.linear import pretrained_start_epoch
from core.errors import UserError, cli_main
from core.flags import check_flags
from core.eval import LinearEvalConfig, freeze_all_but, init_linear_head, run_linear_eval

from au_lib import launch
from au_lib.config import epoch_lr, lincls_parser, lincls_save_folder
from au_lib.nets import check_has_fc, net_constructor

PREFIX = "module.encoder_q."

# Flags accepted with no effect (one warning line for a non-default value) / that cannot work here (one-line
# error); README "Flag surface" lists the same entries.
NO_EFFECT: dict = {}
UNSUPPORTED = {
    "amp": "the linear classifier trains and validates in fp32 (core.eval.linear); the original main_lincls "
           "has no mixed precision either",
}


def encoder_q_state(state_dict):
    """Keys ``module.encoder_q.<name>`` -> ``<name>``, except ``module.encoder_q.fc*`` (projection / MLP
    head); every other key (encoder_k, queue, queue_ptr, scalar_label) is dropped."""
    return {k[len(PREFIX):]: v for k, v in state_dict.items()
            if k.startswith(PREFIX) and not k.startswith(PREFIX + "fc")}


def load_pretrained(model, path: str):
    """Load a main_moco checkpoint into ``model`` (non-strict); the missing keys must be exactly fc.weight/bias.
    Returns the loaded encoder state (the reference of the sanity check)."""
    ckpt = load_checkpoint(path)
    if "state_dict" not in ckpt:
        raise UserError(f"'{path}' is not a main_moco checkpoint (no 'state_dict'; keys: {sorted(ckpt)[:6]})")
    state = encoder_q_state(ckpt["state_dict"])
    if not state:
        raise UserError(f"'{path}' has no '{PREFIX}*' weights (expected a main_moco checkpoint)")
    try:
        msg = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise UserError(f"'{path}' does not match --arch: {str(e).strip().splitlines()[-1][:300]}") from None
    if set(msg.missing_keys) != {"fc.weight", "fc.bias"} or msg.unexpected_keys:
        raise UserError(f"'{path}' does not match the architecture: missing {msg.missing_keys[:4]}, "
                        f"unexpected {msg.unexpected_keys[:4]}")
    print(f"=> loaded pre-trained model '{path}'")
    return state


def check_args(args) -> None:
    check_has_fc(args.arch)
    if not is_builtin(args.data) and args.data.partition(":")[0].lower() not in TORCHVISION_SETS:
        split_dir(args.data, "train")
        split_dir(args.data, "val")
    if args.pretrained and not os.path.isfile(args.pretrained):
        raise UserError(f"no checkpoint found at '{args.pretrained}'")
    if args.resume and not os.path.isfile(args.resume):
        raise UserError(f"no checkpoint found at '{args.resume}'")


def start_epoch(args) -> int:
    """``--start-epoch`` after the originals' ``--pretrained`` reset (see ``pretrained_start_epoch``)."""
    return pretrained_start_epoch(args.start_epoch, args.pretrained)


@cli_main
def main(argv=None) -> None:
    parser = lincls_parser()
    args = parser.parse_args(argv)
    check_flags(args, parser, NO_EFFECT, UNSUPPORTED)
    check_args(args)
    base = args.pretrained or os.path.join("results", "random_init")
    args.save_folder = lincls_save_folder(base, args.batch_size, args.lr, args.schedule, args.epochs)
    launch.prepare(args, floor_batch=True)  # the original floors int(batch_size / ngpus_per_node)
    args.start_epoch = start_epoch(args)
    os.makedirs(args.save_folder, exist_ok=True)  # here, inside cli_main: a bad path is one error line
    launch.run(main_worker, args)


def main_worker(ctx, args) -> None:
    launch.worker_setup(ctx, args)
    # data first: the number of classes comes from the train folder
    train_ds = build_dataset(args.data, "train", linear_train_transform(args.image_size),
                             image_size=args.image_size, num_samples=args.num_samples, seed=args.seed or 0)
    val_ds = build_dataset(args.data, "val", eval_transform(args.image_size), image_size=args.image_size,
                           num_samples=args.num_samples, seed=args.seed or 0)
    num_classes = len(train_ds.classes)
    train_loader = build_loader(train_ds, args.batch_size, shuffle=True, drop_last=False,
                                num_workers=args.workers, seed=args.seed or 0)
    # no distributed sampler for validation: every process evaluates the whole val set (as the original)
    val_loader = DataLoader(val_ds, batch_size=args.batch_size, sampler=SequentialSampler(val_ds),
                            num_workers=args.workers, pin_memory=torch.cuda.is_available())

    print(f"=> creating model '{args.arch}' with {num_classes} classes")
    model = net_constructor(args.arch)(num_classes=num_classes)
    freeze_all_but(model, ("fc.weight", "fc.bias"))
    init_linear_head(model.fc, std=0.01)
    reference = load_pretrained(model, args.pretrained) if args.pretrained else None

    def make_optimizer(m):
        params = [p for p in m.parameters() if p.requires_grad]
        assert len(params) == 2  # fc.weight, fc.bias
        return torch.optim.SGD(params, args.lr, momentum=args.momentum, weight_decay=args.weight_decay)

    run = setup_run(ctx, model, make_optimizer=make_optimizer)  # device -> DDP (broadcast) -> optimizer
    model, wrapped, optimizer = run.model, run.wrapped, run.optimizer
    cfg = LinearEvalConfig(epochs=args.epochs, output_dir=args.save_folder, arch=args.arch,
                           start_epoch=args.start_epoch, print_freq=args.print_freq, resume=args.resume,
                           evaluate=args.evaluate, max_steps_per_epoch=args.max_steps, model_prefix="module.",
                           ckpt_name="checkpoint_{epoch:04d}.pth.tar")
    print(f"=> saving to {args.save_folder}")
    res = run_linear_eval(wrapped, optimizer, train_loader, val_loader, cfg, ctx,
                          lr_at_epoch=lambda epoch: epoch_lr(args.lr, epoch, args.epochs, args.schedule),
                          reference_state=reference,
                          extra_state=lambda res: {"acc1": res["acc1"], "acc5": res["acc5"]})
    print(f"=> best Acc@1 {res['best_acc1']:.3f}")


if __name__ == "__main__":
    main()
