"""TWIST self-supervised pre-training (bytedance/TWIST ``train.py`` + ``engine.train_one_epoch``).

    python train.py --backbone vit_s                                   # one process, built-in data
    python3 -m torch.distributed.launch --nproc_per_node=8 --use_env train.py --data-path DIR ...
    torchrun --nproc_per_node=8 train.py ...                           # same; gloo on CPU

``--eval_only 1 --resume CKPT`` runs the clustering evaluation (NMI, AMI, ARI, FMI, Hungarian ACC, top-5
ACC) on the val split and saves the matching; ``--inference_only 1`` prints the top-10 classes of one image.
"""
from __future__ import annotations

import dataclasses
import json
import os

import torch

from core import dist
from core.data import build_dataset, build_loader, seed_everything
from core.engine import EngineConfig, copy_checkpoint, load_checkpoint, save_checkpoint, setup_run, train
from core.errors import UserError, cli_main
from core.flags import check_flags
from twist_lib.builder import (build_optimizer, build_twist, finalize_args, harder_transform, schedules,
                               set_step, train_transform)
from twist_lib.cluster import evaluate_clustering, inference, val_loader
from twist_lib.config import NON_NEGATIVE, get_args_parser
from twist_lib.head import bunch_rank_groups, make_bunch_group
from twist_lib.model import TwistMethod, ema_update

# accepted as the original accepts them, with no effect there either (a non-default value prints a warning)
NO_EFFECT = {
    "dataset": "the original train.py never reads it",
    "reduce_mean": "unused in the original",
    "sched": "unused in the original (timm's create_scheduler is imported, never called)",
    "warmup_epochs": "overwritten as in the original: 3 if --epochs <= 20, 5 if <= 50, else 10",
    "world_size": "overwritten by the launcher's WORLD_SIZE, as in the original",
    "local_rank": "repo addition for torch.distributed.launch without --use_env (the original needed --use_env); "
                  "the local rank is read from LOCAL_RANK",
}
# set by the launcher, not by the user: listed above, but no warning on the ranks it is passed to
LAUNCHER_FLAGS = ("local_rank",)
# cannot work here: a non-default value stops with a one-line error
UNSUPPORTED = {
    "use_lmdb": "LMDB is not supported in this repo; pass an ImageFolder tree (DIR/train/CLASS/) or "
                "'synthetic' as --data-path",
}


# names of the original's early multi-head checkpoints, remapped on load as train.py did
OLD_HEAD_KEYS = {
    "projection_heads.cls_heads.0.0.weight": "projection_heads.last_linear.weight",
    "projection_heads.cls_heads.0.0.bias": "projection_heads.last_linear.bias",
    "projection_heads.cls_heads.0.1.running_mean": "projection_heads.norm.running_mean",
    "projection_heads.cls_heads.0.1.running_var": "projection_heads.norm.running_var",
    "projection_heads.cls_heads.0.1.num_batches_tracked": "projection_heads.norm.num_batches_tracked",
}


def load_model_weights(model, state, what):
    state = {OLD_HEAD_KEYS.get(k, k): v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(f"{what} does not match the model: missing {list(missing)[:4]}, "
                        f"unexpected {list(unexpected)[:4]}")


def adapt_checkpoint(ck, optimizer, what: str) -> bool:
    """Make a checkpoint of the original code loadable by the engine the way the original's resume read it:
    rename the early head keys of ``model`` / ``teacher``; without an ``engine`` entry (the original's format)
    continue at ``epoch + 1`` with its ``scaler`` and complete its optimizer groups with this run's group
    settings (LARS ``eps``, ``lr_scale`` = 1 / ``--lr_wbr``, ...). Returns whether anything changed."""
    changed = False
    for e in ("model", "teacher"):
        if isinstance(ck.get(e), dict) and any(k in OLD_HEAD_KEYS for k in ck[e]):
            ck[e] = {OLD_HEAD_KEYS.get(k, k): v for k, v in ck[e].items()}
            changed = True
    if "engine" not in ck and "epoch" in ck:
        saved = ck.get("optimizer", {}).get("param_groups", [])
        if saved and len(saved) != len(optimizer.param_groups):
            raise UserError(f"{what}: its optimizer has {len(saved)} parameter groups, this run "
                            f"{len(optimizer.param_groups)} (use the same --optim / --exclude-bias-weight-decay)")
        for g, cur in zip(saved, optimizer.param_groups):
            for k, v in cur.items():
                if k != "params":
                    g.setdefault(k, v)
        ck["engine"] = {"epoch": int(ck["epoch"]) + 1}
        changed = True
    return changed


def resolve_device(ctx: dist.DistContext, spec: str) -> dist.DistContext:
    """``--device`` (original: ``torch.device(args.device)``): ``cuda`` = the GPU of this process's local rank
    (CPU + gloo on a machine without CUDA), ``cpu``, or ``cuda:N`` = GPU N for a one-process run. With several
    processes each one uses the GPU of its local rank (the original's ``device_ids=[args.gpu]``), so a fixed
    ``cuda:N`` is an error there."""
    try:
        dev = torch.device(spec)
    except (RuntimeError, ValueError):
        raise UserError(f"--device '{spec}' is not a device (use cuda, cuda:N or cpu)") from None
    if dev.type == "cpu":
        return dataclasses.replace(ctx, device=torch.device("cpu"))
    if dev.type != "cuda":
        raise UserError(f"--device '{spec}' is not supported here (use cuda, cuda:N or cpu)")
    if dev.index is None:
        return ctx  # the launcher's choice: cuda:<local rank>, or the CPU without CUDA
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if dev.index >= n:
        raise UserError(f"--device {spec}: this machine has {n} CUDA device{'s' if n != 1 else ''}")
    if ctx.world_size > 1:
        raise UserError(f"--device {spec} names one GPU, but this run has {ctx.world_size} processes, each on "
                        f"the GPU of its local rank: pass --device cuda")
    torch.cuda.set_device(dev.index)
    return dataclasses.replace(ctx, device=dev)


def check_args(args) -> None:
    """One-line errors for values the original would crash on or silently misuse."""
    if args.batch_size < 1 or args.epochs < 1:
        raise UserError("--batch-size and --epochs must be positive")
    for dest in NON_NEGATIVE:
        if getattr(args, dest) < 0:
            raise UserError(f"--{dest} must be non-negative, got {getattr(args, dest)}")


def engine_config(args, output_dir: str, resume: str) -> EngineConfig:
    """The engine settings of the original loop: fp16 autocast + GradScaler with ``--amp 1`` (CUDA), and the
    gradient clipping of its AMP branch, which runs whenever ``--amp 1`` creates the GradScaler (also here on
    CPU, where no autocast runs): ``clip_grad = --clip_norm`` with ``--amp 1``, no clipping with ``--amp 0``."""
    return EngineConfig(epochs=args.epochs, output_dir=output_dir, start_epoch=args.start_epoch,
                        amp="fp16" if args.amp else "off", clip_grad=args.clip_norm if args.amp else 0.0,
                        print_freq=10, ckpt_names=("checkpoint.pth",), model_key="model", resume=resume,
                        max_steps_per_epoch=args.max_steps_per_epoch or None, desc="twist")


def main_worker(ctx: dist.DistContext, args) -> None:
    ctx = resolve_device(ctx, args.device)
    args = finalize_args(args, ctx.world_size)
    seed_everything(args.seed, ctx.rank)
    if ctx.device.type == "cuda":
        torch.backends.cudnn.benchmark = not args.determine
        torch.backends.cudnn.deterministic = bool(args.determine)
    output_dir = args.output_dir or "."
    os.makedirs(output_dir, exist_ok=True)  # also made by main(); main_worker may be called on its own
    print(f"global crops: {args.global_crops_scale}\nlocal  crops: {args.local_crops_scale}")

    bunch_group = None
    if args.lbn_type == "bn":
        bunch_rank_groups(ctx.world_size, args.batch_size, args.bunch_size)  # validates the sizes
        if ctx.distributed:
            bunch_group = make_bunch_group(ctx.world_size, ctx.rank, args.batch_size, args.bunch_size)
    dev = ctx.device.type
    # the backbone's BNs are synchronised by setup_run(sync_bn=True) below (global group, as the original's
    # convert_sync_batchnorm); the head's BNs are built synchronised (logit BN over the bunch group) and kept
    model = build_twist(args, dev, bunch_group, ctx.distributed, sync_backbone=False)
    n_bb = sum(p.numel() for p in model.backbone.parameters() if p.requires_grad)
    n_head = sum(p.numel() for p in model.projection_heads.parameters() if p.requires_grad)
    print(f"number of backbone params:{n_bb / 1e6:.2f} M\nnumber of head params:{n_head / 1e6:.2f} M\n"
          f"number of total params:{(n_bb + n_head) / 1e6:.2f} M")

    if args.eval_only or args.inference_only:
        if not args.resume:
            raise UserError("--eval_only / --inference_only need --resume CHECKPOINT")
        model = setup_run(ctx, model, sync_bn=True, ddp=False).model
        ckpt = load_checkpoint(args.resume)
        load_model_weights(model, ckpt.get("model", ckpt), f"checkpoint '{args.resume}'")
        if args.eval_only:
            loader = val_loader(args, ctx)
            stats = evaluate_clustering(model, loader, ctx.device, args.tau, args.dim, output_dir,
                                        save=ctx.is_main)
            print({k: v for k, v in stats.items() if k not in ("match", "mapped_preds")})
        else:
            inference(model, args, ctx.device)
        return

    dataset = build_dataset(args.data_path, "train",
                            train_transform(args.aug, args.img_size, args.local_crops_number,
                                            args.global_crops_scale, args.local_crops_scale),
                            image_size=args.img_size, num_samples=args.num_samples or None, seed=args.seed)
    loader = build_loader(dataset, args.batch_size, shuffle=True, drop_last=True, num_workers=args.num_workers,
                          pin_memory=args.pin_mem and dev == "cuda", seed=args.seed)
    niter = len(loader)
    if args.max_steps_per_epoch:
        niter = min(niter, args.max_steps_per_epoch)
    if niter == 0:
        raise UserError(f"the training set ({len(dataset)} images) is smaller than one batch of "
                        f"{args.batch_size} per process")
    sched = schedules(args, niter)

    def make_teacher(student):
        """The EMA teacher: the same network, loaded from the DDP-broadcast student (as the original's
        ``teacher.load_state_dict(model.state_dict())`` after ``DistributedDataParallel``)."""
        teacher = build_twist(args, dev, bunch_group, ctx.distributed)
        teacher.load_state_dict(student.state_dict())
        return teacher

    run = setup_run(ctx, model, make_optimizer=lambda m: build_optimizer(m, args), sync_bn=True, ddp=True,
                    teachers={"teacher": make_teacher} if args.use_momentum_encoder else None)
    model, wrapped, optimizer = run.model, run.wrapped, run.optimizer
    teacher = run.teachers.get("teacher")
    method = TwistMethod(lam1=args.lam1, lam2=args.lam2, tau=args.tau, eps=args.EPS, mme_epochs=args.mme_epochs,
                         style=args.crops_interact_style, multicrop=args.aug == "multicrop",
                         threshold=args.threshold, teacher=teacher,
                         watch=True)
    model.attach(method)

    mme_step = args.mme_epochs * niter
    ckpt_path = os.path.join(output_dir, "checkpoint.pth")
    mme_path = os.path.join(output_dir, "mme_ckpt.pth")

    def before_step(step: int, total: int) -> None:
        epoch = step // niter
        method.epoch = epoch
        set_step(optimizer, args, sched, step, niter)
        groups = optimizer.param_groups
        method.extra_logs = {"lrb": groups[-1]["lr"], "wd": groups[0]["weight_decay"],
                             "wdb": groups[-1]["weight_decay"]}
        if method.self_labeling():
            off = step if args.crops_interact_style == "self_label" else step - mme_step
            method.quantile = float(sched["quantile"][min(off, len(sched["quantile"]) - 1)])

    def after_save(epoch: int) -> None:
        """``mme_ckpt.pth``: the checkpoint of epoch ``mme_epochs - 1`` (the original saved it there), an
        atomic copy written only when that epoch is trained, so a resume never rewrites it."""
        if epoch + 1 == args.mme_epochs:
            copy_checkpoint(ckpt_path, mme_path)

    def after_step(step: int, total: int) -> None:
        if teacher is not None:
            m = sched["momentum"]
            ema_update(model, teacher, float(m[min(step, len(m) - 1)]))

    switched = []

    def switch_to_harder(epoch_next: int) -> None:
        if (args.crops_interact_style == "sparse" and args.mme_epochs <= epoch_next < args.epochs
                and not switched):
            switched.append(epoch_next)
            print("Switching to Harder Multi Crop")
            method.multicrop = True
            dataset.transform = harder_transform(args)

    def end_epoch(epoch: int):
        stats = {}
        last = getattr(method, "last_views", None)
        if last is not None:  # core diagnostics on the last global batch's logits (both global views)
            from core.eval import collapse_metrics

            stats.update(collapse_metrics(*(dist.concat_all_gather(v).float() for v in last)))
        preds, labels = method.pop_predictions()
        if preds is not None and (args.enable_watch or (epoch + 1) % 10 == 0):
            # training-set monitor of the original: argmax of view 0 vs labels, no Hungarian ACC (-1)
            from sklearn import metrics as skm

            stats.update({"nmi": 100 * skm.normalized_mutual_info_score(labels, preds),
                          "ami": 100 * skm.adjusted_mutual_info_score(labels, preds),
                          "ari": 100 * skm.adjusted_rand_score(labels, preds),
                          "fscore": 100 * skm.fowlkes_mallows_score(labels, preds), "adjacc": -1.0})
        if args.dim == 1000:
            ev = evaluate_clustering(model, val_loader(args, ctx), ctx.device, args.tau, args.dim, output_dir,
                                     save=False)
            stats.update({f"val_{k}": v for k, v in ev.items() if k not in ("match", "mapped_preds")})
        switch_to_harder(epoch + 1)
        return stats

    def extra_state(epoch: int):
        state = {"backbone": model.backbone.state_dict(), "args": dict(vars(args)), "epoch": epoch}
        if teacher is not None:
            state.update({"teacher": teacher.state_dict(), "teacher_backbone": teacher.backbone.state_dict()})
        return state

    def load_extra_state(ckpt) -> None:
        if teacher is not None:
            if "teacher" in ckpt:
                teacher.load_state_dict(ckpt["teacher"])
            else:
                teacher.load_state_dict(model.state_dict())
        nxt = ckpt.get("engine", {}).get("epoch", ckpt.get("epoch", 0))
        switch_to_harder(nxt)

    resume = args.resume
    if resume:
        ck = load_checkpoint(resume)
        if isinstance(ck, dict) and adapt_checkpoint(ck, optimizer, resume):
            resume = os.path.join(output_dir, "resume_remapped.pth")
            if ctx.is_main:
                save_checkpoint(ck, resume)
            dist.barrier()
        del ck
    if ctx.is_main and args.start_epoch == 0 and not args.resume:
        with open(os.path.join(output_dir, "log.txt"), "a") as f:
            f.write(json.dumps({k: v for k, v in vars(args).items()
                                if isinstance(v, (int, float, str, bool, list, tuple, type(None)))}) + "\n")
    cfg = engine_config(args, output_dir, resume)
    print(f"Start training for {args.epochs} epochs")
    train(wrapped, optimizer, loader, cfg, ctx, before_step=before_step, after_step=after_step,
          end_epoch=end_epoch, extra_state=extra_state, load_extra_state=load_extra_state, after_save=after_save)


@cli_main
def main(argv=None) -> None:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    check_flags(args, parser, {k: v for k, v in NO_EFFECT.items() if k not in LAUNCHER_FLAGS},
                UNSUPPORTED)
    check_args(args)
    # the output folder is made here, inside the error wrapper: a bad path is one error line
    os.makedirs(args.output_dir or ".", exist_ok=True)
    if args.device == "cpu":  # stay on CPU (gloo) even where CUDA exists
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    dist.launch(main_worker, args, dist_url=args.dist_url)


if __name__ == "__main__":
    main()
