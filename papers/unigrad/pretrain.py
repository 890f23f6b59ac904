"""UniGrad pretraining (original ``pretrain.py`` + ``project/pretrainer.py``) on core.engine.

    python pretrain.py CONFIG [key=value ...]        # usually through ./run_pretrain.sh CONFIG NUM_GPUS

One config selects the method and its form (``loss`` name, or ``form=loss|grad|grad_mm``); see README.md.
Schedules (per step): lr = unigrad_lr (warmup from 1e-3 * lr, cosine over the *total* steps, original quirk),
EMA momentum = 1 - (1 - base_momentum)(cos(pi step / T) + 1) / 2 (``mm_schedule: const`` keeps base_momentum).
"""
from __future__ import annotations

import argparse
import json
import os

import torch

from core import dist
from core.augment import MultiView, eval_transform, moco_v2
from core.data import build_dataset, build_loader, is_builtin, seed_everything
from core.engine import EngineConfig, copy_checkpoint, load_checkpoint, setup_run, strip_prefix, train
from core.engine.trainer import load_model_state
from core.errors import UserError, cli_main
from core.eval import knn_eval
from core.flags import reject_unsupported, warn_no_effect
from core.optim import apply_lr, unigrad_lr
from unigrad_lib.config import adjust_mm, load_config, surface_parser
from unigrad_lib.launch import per_rank_batch, slurm_env
from unigrad_lib.model import SiameseNet, checkpoint_entries

# Options and config keys accepted with no effect (a non-default value prints one warning line) and those that
# cannot work here (a non-default value is a one-line error); README "Flag surface" lists the same entries.
NO_EFFECT = {
    "local_rank": "the process's LOCAL_RANK comes from the environment, as with the original's "
                  "torch.distributed.launch --use_env",
    "num_layers": "the projector has 3 layers; the original also never reads this key",
    "test_freq": "no periodic evaluation; the original also never reads this key (knn_freq runs the kNN monitor)",
    "debug": "the original reads it in dataloader.py and never uses it",
}
UNSUPPORTED: dict = {}


def make_dataset(path, split, transform, cfg):
    """``synthetic`` / ``digits`` = built-in set (``image_size`` px, ``num_samples`` train images); otherwise an
    ImageFolder root that *is* the split (original ``train_datadir`` / ``test_datadir``)."""
    if is_builtin(path):
        n = cfg.num_samples if split == "train" else None
        return build_dataset(path, split, transform, image_size=cfg.image_size, num_samples=n,
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


def make_optimizer(cfg, init_lr: float):
    """SGD over the online branch (one group, weight decay on every parameter, as the original)."""
    return lambda m: torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=init_lr,
                                     momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def main_worker(ctx: dist.DistContext, cfg) -> None:
    seed_everything(cfg.seed, ctx.rank)
    if ctx.is_main:
        print(json.dumps({k: v for k, v in cfg.items()}, default=str))
    per_gpu = per_rank_batch(cfg.whole_batch_size, ctx, "whole_batch_size")
    transform = MultiView([moco_v2(cfg.image_size), moco_v2(cfg.image_size)])
    train_set = make_dataset(cfg.train_datadir, "train", transform, cfg)
    model = SiameseNet(cfg)
    if ctx.is_main:
        print(model)
    init_lr = cfg.base_lr * cfg.whole_batch_size / 256
    # device -> SyncBN (CUDA) / GroupBatchNorm (gloo) -> DDP (broadcasts rank 0's weights, the momentum branch
    # inside the model included) -> SGD over the final online parameters
    run = setup_run(ctx, model, sync_bn=True, make_optimizer=make_optimizer(cfg, init_lr))
    inner, model, optimizer = run.model, run.wrapped, run.optimizer

    if cfg.knn_eval and cfg.resume_path:
        ckpt = load_checkpoint(cfg.resume_path)
        if not isinstance(ckpt, dict) or "model" not in ckpt:
            keys = sorted(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
            raise UserError(f"checkpoint '{cfg.resume_path}' has no 'model' entry (keys: {keys})")
        load_model_state(inner, strip_prefix(ckpt["model"], "module."), f"checkpoint '{cfg.resume_path}'")
        acc = knn_monitor(model, cfg, ctx)
        print(f"kNN top-1 of '{cfg.resume_path}': {acc:.2f}")
        return

    loader = build_loader(train_set, per_gpu, shuffle=True, drop_last=True, num_workers=cfg.n_workers)
    spe = steps_per_epoch(loader, cfg)
    warmup_steps = cfg.warmup_epochs * spe

    def after_save(epoch: int) -> None:
        """checkpoint_{epoch}.pth.tar every save_freq epochs (0-indexed epoch, as the original): an atomic copy
        of the latest.pth.tar just written, for the epochs this invocation trained only (a resume never
        rewrites an older named checkpoint)."""
        if (epoch + 1) % cfg.save_freq == 0:
            copy_checkpoint(os.path.join(cfg.work_dir, "latest.pth.tar"),
                            os.path.join(cfg.work_dir, f"checkpoint_{epoch}.pth.tar"))

    def before_step(step: int, total: int) -> None:
        apply_lr(optimizer, unigrad_lr(step, total, warmup_steps, init_lr))
        inner.mm = adjust_mm(cfg.base_momentum, step, total, cfg.mm_schedule)

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
          extra_state=extra_state, after_save=after_save)


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="UniGrad pretraining")
    parser.add_argument("config_path", type=str, help="config file (YAML content)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of config keys")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return parser


def flag_surface() -> argparse.ArgumentParser:
    """The command-line options plus every config key: what NO_EFFECT / UNSUPPORTED refer to."""
    return surface_parser(get_parser())


def check_surface(args, cfg) -> None:
    """Unsupported values stop every rank; the no-effect warnings come once (rank 0 of a launcher's env)."""
    surface = flag_surface()
    for source in (args, cfg):
        reject_unsupported(source, surface, UNSUPPORTED)
    if int(os.environ.get("RANK", "0") or 0) == 0:
        for source in (args, cfg):
            warn_no_effect(source, surface, NO_EFFECT)


@cli_main
def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    cfg = load_config(args.config_path, args.overrides)
    check_surface(args, cfg)
    if cfg.launcher == "slurm":
        slurm_env(cfg.port)
    os.makedirs(cfg.work_dir, exist_ok=True)  # here, inside cli_main: a bad path is one error line
    dist.launch(main_worker, cfg)


if __name__ == "__main__":
    main()
