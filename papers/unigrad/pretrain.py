"""UniGrad pretraining (original ``pretrain.py`` + ``project/pretrainer.py``) on core.engine.

    python pretrain.py CONFIG [key=value ...]        # usually through ./run_pretrain.sh CONFIG NUM_GPUS

One config selects the method and its form (``loss`` name, or ``form=loss|grad|grad_mm``); see README.md.
Schedules (per step): lr = unigrad_lr (warmup from 1e-3 * lr, cosine over the *total* steps, original quirk),
EMA momentum = 1 - (1 - base_momentum)(cos(pi step / T) + 1) / 2.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil

import torch

from core import dist
from core.augment import MultiView, eval_transform, moco_v2
from core.data import build_dataset, build_loader, is_synthetic, seed_everything
from core.engine import EngineConfig, load_checkpoint, prepare_model, strip_prefix, train
from core.engine.trainer import load_model_state
from core.errors import UserError, cli_main
from core.eval import knn_eval
from core.optim import apply_lr, ema_momentum, unigrad_lr
from unigrad_lib.config import load_config
from unigrad_lib.launch import slurm_env
from unigrad_lib.model import SiameseNet, checkpoint_entries


def make_dataset(path, split, transform, cfg):
    """``synthetic`` = built-in set (``image_size`` px, ``num_samples`` train images); otherwise an
    ImageFolder root that *is* the split (original ``train_datadir`` / ``test_datadir``)."""
    if is_synthetic(path):
        n = cfg.num_samples if split == "train" else None
        return build_dataset("synthetic", split, transform, image_size=cfg.image_size, num_samples=n,
                             seed=cfg.seed)
    return build_dataset(path, split, transform, root_is_split=True)


def steps_per_epoch(loader, cfg) -> int:
    n = len(loader)
    return min(n, cfg.max_steps_per_epoch) if cfg.max_steps_per_epoch else n


def knn_monitor(model, cfg, ctx) -> float:
    """Weighted kNN top-1 (k=knn_k, t=knn_t) of the online encoder: memory = train set with the test
    transform (batch 512), queries = test set (batch 256), both sharded over ranks."""
    tf = eval_transform(cfg.image_size)
    memory = make_dataset(cfg.train_datadir, "train", tf, cfg)
    test = make_dataset(cfg.test_datadir, "val", tf, cfg)
    mem_loader = build_loader(memory, 512, shuffle=False, drop_last=False, num_workers=cfg.n_workers)
    test_loader = build_loader(test, 256, shuffle=False, drop_last=False, num_workers=cfg.n_workers)
    encoder = dist.unwrap(model).encoder
    return knn_eval(encoder, mem_loader, test_loader, ctx.device, len(memory.classes), cfg.knn_k, cfg.knn_t)


def main_worker(ctx: dist.DistContext, cfg) -> None:
    seed_everything(cfg.seed, ctx.rank)
    if ctx.is_main:
        os.makedirs(cfg.work_dir, exist_ok=True)
        print(json.dumps({k: v for k, v in cfg.items()}, default=str))
    per_gpu = int(cfg.whole_batch_size / ctx.world_size)
    if per_gpu < 1:
        raise UserError(f"whole_batch_size={cfg.whole_batch_size} is smaller than the {ctx.world_size} processes")
    transform = MultiView([moco_v2(cfg.image_size), moco_v2(cfg.image_size)])
    train_set = make_dataset(cfg.train_datadir, "train", transform, cfg)
    model = SiameseNet(cfg)
    if ctx.is_main:
        print(model)
    inner, model = prepare_model(model, ctx, sync_bn=True)  # SyncBN on CUDA, GroupBatchNorm on gloo
    init_lr = cfg.base_lr * cfg.whole_batch_size / 256
    optimizer = torch.optim.SGD([p for p in inner.parameters() if p.requires_grad], lr=init_lr,
                                momentum=cfg.momentum, weight_decay=cfg.weight_decay)

    if cfg.knn_eval and cfg.resume_path:
        ckpt = load_checkpoint(cfg.resume_path)
        load_model_state(inner, strip_prefix(ckpt["model"], "module."), f"checkpoint '{cfg.resume_path}'")
        acc = knn_monitor(model, cfg, ctx)
        print(f"kNN top-1 of '{cfg.resume_path}': {acc:.2f}")
        return

    loader = build_loader(train_set, per_gpu, shuffle=True, drop_last=True, num_workers=cfg.n_workers)
    spe = steps_per_epoch(loader, cfg)
    warmup_steps = cfg.warmup_epochs * spe

    def save_named(epoch: int) -> None:
        """checkpoint_{epoch}.pth.tar every save_freq epochs (0-indexed epoch, as the original)."""
        if ctx.is_main and (epoch + 1) % cfg.save_freq == 0:
            src = os.path.join(cfg.work_dir, "latest.pth.tar")
            if os.path.isfile(src):
                shutil.copyfile(src, os.path.join(cfg.work_dir, f"checkpoint_{epoch}.pth.tar"))

    def before_step(step: int, total: int) -> None:
        if step > 0 and step % spe == 0:
            save_named(step // spe - 1)
        apply_lr(optimizer, unigrad_lr(step, total, warmup_steps, init_lr))
        inner.mm = ema_momentum(cfg.base_momentum, step, total)

    def end_epoch(epoch: int):
        if cfg.knn_freq and ((epoch + 1) % cfg.knn_freq == 0 or epoch + 1 == cfg.epochs):
            return {"knn_top1": knn_monitor(model, cfg, ctx)}
        return {}

    def extra_state(epoch: int):
        return {"step": (epoch + 1) * spe, **checkpoint_entries(model)}

    ecfg = EngineConfig(epochs=cfg.epochs, output_dir=cfg.work_dir, amp="fp16" if cfg.amp else "off",
                        print_freq=cfg.print_freq, ckpt_names=("latest.pth.tar",), model_key="model",
                        model_prefix="module.", resume=cfg.resume_path or "",
                        max_steps_per_epoch=cfg.max_steps_per_epoch, desc=f"{cfg.loss}")
    train(model, optimizer, loader, ecfg, ctx, before_step=before_step, end_epoch=end_epoch,
          extra_state=extra_state)
    save_named(cfg.epochs - 1)


@cli_main
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="UniGrad pretraining")
    parser.add_argument("config_path", type=str, help="config file (YAML content)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of config keys")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    cfg = load_config(args.config_path, args.overrides)
    if cfg.launcher == "slurm":
        slurm_env(cfg.port)
    dist.launch(main_worker, cfg)


if __name__ == "__main__":
    main()
