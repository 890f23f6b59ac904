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
from core.engine import EngineConfig, prepare_model, train
from core.errors import UserError, cli_main
from core.optim import ema_momentum
from rdm_lib.diagnostics import RankMonitor
from rdm_lib.models import build_solo_method
from rdm_lib.solo_args import NUM_CLASSES, pretrain_config, pretrain_parser
from rdm_lib.solo_train import AMP, build_optimizer, group_lr
from rdm_lib.solo_data import num_classes_of, pretrain_transform, solo_dataset, val_transform


def run(ctx, cfg):
    seed_everything(cfg["seed"], ctx.rank)
    world = ctx.world_size
    size = cfg["pipelines"][0]["crop_size"]
    train_ds = solo_dataset(cfg["dataset"], cfg["data_dir"], cfg["train_dir"], "train",
                            pretrain_transform(cfg["dataset"], cfg["pipelines"]), size)
    val_ds = solo_dataset(cfg["dataset"], cfg["data_dir"], cfg["val_dir"], "val",
                          val_transform(cfg["dataset"], size), size)
    num_classes = num_classes_of(train_ds, cfg["dataset"], NUM_CLASSES)
    train_loader = build_loader(train_ds, cfg["batch_size"], shuffle=True, drop_last=True,
                                num_workers=cfg["num_workers"], seed=cfg["seed"])
    val_loader = build_loader(val_ds, cfg["batch_size"], shuffle=False, drop_last=False,
                              num_workers=cfg["num_workers"], seed=cfg["seed"])

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
    groups = model.param_groups(cfg["lr_scaled"], cfg["classifier_lr_scaled"], cfg["weight_decay"])
    optimizer = build_optimizer(cfg, groups)
    inner, wrapped = prepare_model(model, ctx, sync_bn=cfg["sync_batchnorm"])

    out_dir = os.path.join(cfg["checkpoint_dir"], cfg["method"], cfg["name"])
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
    ecfg = EngineConfig(epochs=cfg["max_epochs"], output_dir=out_dir, amp=AMP.get(str(cfg["precision"]), "off"),
                        ckpt_names=(f"{cfg['name']}.ckpt",), model_key="state_dict", resume=resume,
                        max_steps_per_epoch=cfg["max_steps_per_epoch"], desc=cfg["name"],
                        save_every=max(1, cfg["checkpoint_frequency"]))
    train(wrapped, optimizer, train_loader, ecfg, ctx, before_step=before_step, after_step=after_step,
          end_epoch=end_epoch, extra_state=lambda epoch: {"args": {k: v for k, v in cfg.items()
                                                                   if k != "pipelines"}})


@cli_main
def main(argv=None):
    args = pretrain_parser().parse_args(argv)
    cfg = pretrain_config(args)
    if cfg["num_nodes"] != 1 and not dist.env_launched():
        raise UserError("--num_nodes > 1 needs torchrun (RANK/WORLD_SIZE in the environment)")
    devices = cfg["devices"]
    gpus = devices if torch.cuda.is_available() and cfg["accelerator"] != "cpu" else None
    dist.launch(run, cfg, multiprocessing_distributed=len(devices) > 1, world_size=1, rank=0,
                dist_url="env://", gpus=gpus if gpus else (devices if len(devices) > 1 else None))


if __name__ == "__main__":
    main()
