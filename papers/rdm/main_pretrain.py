"""solo-learn ``main_pretrain.py`` for SimSiam, BYOL, RDM-SimSiam and RDM-BYOL (CIFAR / ImageNet-100).

Loop, checkpointing, AMP and DDP: :func:`core.engine.train`; LARS: :class:`core.optim.LARS` (mode
``solo``); schedules: :mod:`core.optim`; launch: :func:`core.dist.launch` (``--devices 0,1`` spawns two
processes; gloo on CPU). Logs (and ``log.txt``/TensorBoard/``spectra.png``) go to
``<checkpoint_dir>/<method>/<name>``.
"""
import os

import torch

from core import dist
from core.data import build_loader, seed_everything
from core.engine import EngineConfig, setup_run, train
from core.errors import cli_main
from core.flags import check_flags
from core.optim import ema_momentum
from rdm_lib.diagnostics import RankMonitor
from rdm_lib.models import build_solo_method
from rdm_lib.run_utils import guard_hint, launch_solo
from rdm_lib.solo_args import NO_EFFECT_COMMON, NUM_CLASSES, UNSUPPORTED_COMMON, pretrain_config, pretrain_parser
from rdm_lib.solo_train import AMP, build_optimizer, group_lr
from rdm_lib.solo_data import num_classes_of, pretrain_transform, solo_dataset, val_transform

# accepted with no effect (one warning line when set): dest -> reason
NO_EFFECT = {
    **NO_EFFECT_COMMON,
    "knn_k": "only read with --knn_eval (the original ignores it too without --knn_eval)",
}
# a non-default value stops with a one-line error: dest -> reason
UNSUPPORTED = {
    **UNSUPPORTED_COMMON,
    "knn_eval": "solo's online kNN evaluation is not implemented here",
}


def run(ctx, cfg):
    seed_everything(cfg["seed"], ctx.rank)
    world = ctx.world_size
    size = cfg["pipelines"][0]["crop_size"]
    train_ds = solo_dataset(cfg["dataset"], cfg["data_dir"], cfg["train_dir"], "train",
                            pretrain_transform(cfg["dataset"], cfg["pipelines"]), size, cfg["num_samples"])
    val_ds = solo_dataset(cfg["dataset"], cfg["data_dir"], cfg["val_dir"], "val",
                          val_transform(cfg["dataset"], size), size)
    num_classes = num_classes_of(train_ds, cfg["dataset"], NUM_CLASSES)
    train_loader = build_loader(train_ds, cfg["batch_size"], shuffle=True, drop_last=True,
                                num_workers=cfg["num_workers"], seed=cfg["seed"])
    val_loader = build_loader(val_ds, cfg["batch_size"], shuffle=False, drop_last=False,
                              num_workers=cfg["num_workers"], seed=cfg["seed"], exact_eval=True)

    cifar = cfg["dataset"] in ("cifar10", "cifar100")
    model = build_solo_method(cfg["method"], backbone=cfg["backbone"], num_classes=num_classes, cifar=cifar,
                              zero_init_residual=cfg["zero_init_residual"],
                              proj_hidden_dim=cfg["proj_hidden_dim"], proj_output_dim=cfg["proj_output_dim"],
                              pred_hidden_dim=cfg["pred_hidden_dim"], pred_type=cfg["pred_type"],
                              pred_location=cfg["pred_location"], sigma=cfg["sigma"], guard=cfg["guard"],
                              momentum_classifier=cfg["momentum_classifier"])
    # solo additional_setup_pretrain: lr and classifier_lr scale with the global batch / 256
    scale = cfg["batch_size"] * world / 256
    cfg["lr_scaled"], cfg["classifier_lr_scaled"] = cfg["lr"] * scale, cfg["classifier_lr"] * scale
    setup = setup_run(ctx, model, sync_bn=cfg["sync_batchnorm"], make_optimizer=lambda m: build_optimizer(
        cfg, m.param_groups(cfg["lr_scaled"], cfg["classifier_lr_scaled"], cfg["weight_decay"])))
    inner, wrapped, optimizer = setup.model, setup.wrapped, setup.optimizer

    out_dir = run_dir(cfg)
    steps_per_epoch = len(train_loader)
    if cfg["max_steps_per_epoch"]:
        steps_per_epoch = min(steps_per_epoch, cfg["max_steps_per_epoch"])
    monitor = RankMonitor(lambda: inner, out_dir, ctx.is_main, title=cfg["name"])

    def before_step(step, total):
        for g in optimizer.param_groups:
            g["lr"] = g["base_lr"] if g.get("static_lr") else group_lr(cfg, g["base_lr"], step, total,
                                                                       steps_per_epoch)

    def after_step(step, total):
        if hasattr(inner, "ema_update"):  # BYOL: tau_k = 1 - (1 - tau_base)(cos(pi k / K) + 1) / 2
            inner.ema_update(ema_momentum(cfg["base_tau_momentum"], step, total, cfg["final_tau_momentum"]))
        monitor.after_step(step, total)

    def end_epoch(epoch):
        inner.eval()
        sums = torch.zeros(4, device=ctx.device)
        for i, (x, y) in enumerate(val_loader):
            if cfg["max_steps_per_epoch"] and i >= cfg["max_steps_per_epoch"]:
                break
            loss, c1, c5, n = inner.evaluate_step(x.to(ctx.device), y.to(ctx.device))
            sums += torch.stack([loss, c1, c5, torch.tensor(float(n), device=ctx.device)])
        if dist.is_dist():
            torch.distributed.all_reduce(sums)
        inner.train()
        loss, c1, c5, n = sums.tolist()
        n = max(n, 1.0)
        return {"val_loss": loss / n, "val_acc1": 100 * c1 / n, "val_acc5": 100 * c5 / n,
                **monitor.end_epoch(epoch)}

    resume = cfg["resume_from_checkpoint"] or ("auto" if cfg["auto_resume"] else "")
    # solo's Checkpointer exists only with --save_checkpoint: without it the original writes no checkpoint
    names = (f"{cfg['name']}.ckpt",) if cfg["save_checkpoint"] else ()
    ecfg = EngineConfig(epochs=cfg["max_epochs"], output_dir=out_dir, amp=AMP.get(str(cfg["precision"]), "off"),
                        ckpt_names=names, model_key="state_dict", resume=resume,
                        max_steps_per_epoch=cfg["max_steps_per_epoch"], desc=cfg["name"],
                        save_every=cfg["checkpoint_frequency"])
    rdm = cfg["method"].startswith("rdm")
    with guard_hint(rdm and not cfg["guard"], "--rdm_guard"):
        train(wrapped, optimizer, train_loader, ecfg, ctx, before_step=before_step, after_step=after_step,
              end_epoch=end_epoch, extra_state=lambda epoch: {"args": {k: v for k, v in cfg.items()
                                                                       if k != "pipelines"}})


def run_dir(cfg) -> str:
    return os.path.join(cfg["checkpoint_dir"], cfg["method"], cfg["name"])


@cli_main
def main(argv=None):
    parser = pretrain_parser()
    args = parser.parse_args(argv)
    check_flags(args, parser, NO_EFFECT, UNSUPPORTED)
    cfg = pretrain_config(args)
    os.makedirs(run_dir(cfg), exist_ok=True)  # an unusable output path is a one-line error, before launch
    launch_solo(run, cfg)


if __name__ == "__main__":
    main()
