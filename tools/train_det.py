"""Fine-tune torchvision Mask R-CNN R50-FPN from a self-supervised backbone and report COCO box/mask AP.

    python tools/train_det.py papers/selfsup_det/configs/mask_rcnn_r50_fpn_mocov2-pretrain_1x_coco.py \
        --pretrained mocov2_r50_800ep_pretrain.pth --work-dir runs/det_mocov2_1x

The config gives the model (``frozen_stages=0``, ``norm='SyncBN'``, ``norm_eval=False``), data (COCO json +
image folder, or ``root='synthetic'`` for the built-in set), SGD (lr 0.02 per 16 images, momentum 0.9, wd 1e-4),
the step schedule with 500-iteration linear warm-up and epochs; ``optimizer.type``, ``lr_config``, ``model.norm``,
``runner`` and ``evaluation.metric`` mean what they mean in mmdet 2.x, or stop with a one-line error
(``tools/det/config.py`` lists every key). Set-up goes through ``core.engine.setup_run`` (device, SyncBN keeping
the Parameters, DDP broadcast, optimizer from the final parameters). Training runs in ``core.engine`` (atomic
``latest.pth`` every epoch, ``--resume auto`` continues exactly), evaluation (bbox + segm AP, pycocotools)
every ``evaluation.interval`` epochs; ``metrics.json`` in the work dir holds every evaluation and the seed's
reference AP. ``--pretrained`` accepts any layout :mod:`tools.checkpoint_convert` recognises (a converted
file, or a raw MoCo / SwAV / ... checkpoint). Multi-process: ``--multiprocessing-distributed --gpus 0 1 ...``
or torchrun (gloo on CPU).
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch

from core import dist
from core.data import seed_everything
from core.engine import EngineConfig, load_checkpoint, load_model_state, setup_run, train
from core.errors import UserError, cli_main
from core.flags import check_flags
from tools.det.coco_eval import evaluate
from tools.det.config import (MmcvLr, apply_overrides, check_config, eval_metrics, grad_clip, load_config,
                              optimizer_class, optimizer_kwargs, scaled_lr)
from tools.det.data import CocoInstances, build_det_loader
from tools.det.model import build_mask_rcnn, load_pretrained
from tools.det.synthetic_coco import write_synthetic_coco


# launch and script flags: every one is read (tests/selfsup_det/test_sdet_flags.py); the config keys have their
# own surface in tools/det/config.py (CONFIG_KEYS / CONFIG_CHOICES / CONFIG_UNSUPPORTED / CONFIG_NO_EFFECT)
NO_EFFECT = {
    "local_rank": "passed by torch.distributed.launch; the process reads LOCAL_RANK from the environment, "
                  "which the launcher also sets",
}
UNSUPPORTED: Dict[str, str] = {}


@dataclass
class DetArgs:
    config: str
    pretrained: Optional[str] = None
    selfsup: str = "auto"
    work_dir: str = "runs/det"
    data_root: Optional[str] = None
    resume: str = ""
    epochs: Optional[int] = None
    max_iters_per_epoch: Optional[int] = None
    samples_per_gpu: Optional[int] = None
    eval_only: bool = False
    checkpoint: Optional[str] = None
    no_eval: bool = False
    seed: int = 0
    threads: int = 0
    cfg_options: List[str] = field(default_factory=list)
    cfg: Dict[str, Any] = field(default_factory=dict)


def build_data(cfg: Dict[str, Any], work_dir: str):
    d = cfg["data"]
    root = d.get("root", "")
    if root == "synthetic":
        s = d.get("synthetic", {})
        paths = write_synthetic_coco(os.path.join(work_dir, "synthetic_coco"), int(s.get("num_train", 64)),
                                     int(s.get("num_val", 16)), int(s.get("image_size", 96)),
                                     int(s.get("seed", 0)), int(s.get("max_objects", 3)))
        tr = (paths["train_img"], paths["train_ann"])
        va = (paths["val_img"], paths["val_ann"])
    else:
        if not os.path.isdir(root):
            raise UserError(f"data root '{root}' does not exist (use 'synthetic' for the built-in set)")
        tr = (os.path.join(root, d["train"]["img_dir"]), os.path.join(root, d["train"]["ann_file"]))
        va = (os.path.join(root, d["val"]["img_dir"]), os.path.join(root, d["val"]["ann_file"]))
    train_set = CocoInstances(*tr, train=True, flip_prob=float(d.get("flip_prob", 0.5)),
                              filter_empty_gt=bool(d.get("filter_empty_gt", True)),
                              min_size=int(d.get("min_size", 32)))
    val_set = CocoInstances(*va, train=False)
    if train_set.cat_ids != val_set.cat_ids:
        raise UserError("train and val annotation files have different categories")
    return train_set, val_set


def model_cfg(cfg: Dict[str, Any]) -> Dict[str, Any]:
    m = dict(cfg["model"])
    rng = m.pop("min_size_train_range", None)
    if rng:  # mmdet RandomResize scale=[(1333, lo), (1333, hi)]: short side uniform in [lo, hi] per image
        lo, hi = int(rng[0]), int(rng[1])
        m["min_size"] = tuple(range(lo, hi + 1))
    return m


def _barrier(ctx: dist.DistContext) -> None:
    """A barrier bound to this process's GPU under NCCL (``device_ids``), so the first NCCL collective never
    guesses the device from the global rank (wrong GPU with ``--gpus 2 3``)."""
    if not dist.is_dist():
        return
    if ctx.device.type == "cuda" and torch.distributed.get_backend() == "nccl":
        torch.distributed.barrier(device_ids=[ctx.device.index])
    else:
        torch.distributed.barrier()


def build_optimizer(model: torch.nn.Module, cfg: Dict[str, Any], lr: float) -> torch.optim.Optimizer:
    """mmcv ``build_optimizer``: ``torch.optim.<optimizer.type>`` over the trainable parameters with the
    config's other arguments (``lr`` already scaled to the total batch)."""
    opt_cfg = cfg["optimizer"]
    params = [p for p in model.parameters() if p.requires_grad]
    return optimizer_class(opt_cfg.get("type", "SGD"))(params, lr=lr, **optimizer_kwargs(opt_cfg))


def _write_json(path: str, obj: Any) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def run(ctx: dist.DistContext, a: DetArgs) -> Dict[str, Any]:
    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = a.cfg
    seed_everything(a.seed, ctx.rank)
    os.makedirs(a.work_dir, exist_ok=True)
    if ctx.is_main:
        train_set, val_set = build_data(cfg, a.work_dir)
    _barrier(ctx)
    if not ctx.is_main:
        train_set, val_set = build_data(cfg, a.work_dir)

    model = build_mask_rcnn(model_cfg(cfg), train_set.num_classes)
    pretrained = a.pretrained if a.pretrained is not None else cfg.get("pretrained")
    if pretrained and pretrained.lower() != "none":
        layout, n = load_pretrained(model, pretrained, method=a.selfsup)
        print(f"=> loaded {n} backbone tensors from '{pretrained}' ({layout} layout)")
    else:
        print("=> backbone randomly initialised (no --pretrained)")

    d = cfg["data"]
    per_gpu = a.samples_per_gpu or int(d.get("samples_per_gpu", 2))
    opt_cfg = cfg["optimizer"]
    total_batch = per_gpu * ctx.world_size
    base_lr = scaled_lr(float(opt_cfg["lr"]), total_batch, int(opt_cfg.get("base_batch_size", 16)),
                        bool(opt_cfg.get("auto_scale_lr", True)))
    # device -> SyncBN (model.norm=SyncBN: the backbone body holds the detector's only BN layers; Parameters
    # kept) -> DDP broadcast -> optimizer from the final parameters
    r = setup_run(ctx, model, sync_bn=cfg["model"].get("norm", "BN") == "SyncBN", ddp=not a.eval_only,
                  channels_last=False,
                  make_optimizer=None if a.eval_only else (lambda m: build_optimizer(m, cfg, base_lr)))
    inner, wrapped, optimizer = r.model, r.wrapped, r.optimizer
    inner.train()

    train_loader = build_det_loader(train_set, per_gpu, train=True, num_workers=int(d.get("workers_per_gpu", 0)),
                                    seed=a.seed)
    shard = list(range(ctx.rank, len(val_set), ctx.world_size))
    val_loader = build_det_loader(val_set, 1, train=False, sampler=shard)
    metrics_wanted = eval_metrics(cfg)

    def do_eval() -> Dict[str, float]:
        return evaluate(inner, val_loader, val_set.coco, val_set.label2cat, ctx.device, iou_types=metrics_wanted)

    ref = cfg.get("reference", {})
    metrics_path = os.path.join(a.work_dir, "metrics.json")
    record: Dict[str, Any] = {"config": a.config, "reference": ref, "evaluations": []}
    if os.path.isfile(metrics_path):
        try:
            with open(metrics_path) as f:
                record["evaluations"] = json.load(f).get("evaluations", [])
        except (ValueError, AttributeError):
            raise UserError(f"'{metrics_path}' is not a metrics file of train_det (remove it)") from None

    def add_record(entry: Dict[str, Any]) -> None:
        if entry.get("epoch") is not None:  # an epoch evaluated again after a resume replaces its entry
            record["evaluations"] = [e for e in record["evaluations"] if e.get("epoch") != entry["epoch"]]
        record["evaluations"].append(entry)
        if ctx.is_main:
            _write_json(metrics_path, record)

    if a.eval_only:
        if a.checkpoint:
            ck = load_checkpoint(a.checkpoint)
            if "model" not in ck:
                raise UserError(f"checkpoint '{a.checkpoint}' has no 'model' entry")
            load_model_state(inner, ck["model"], f"checkpoint '{a.checkpoint}'")
        m = do_eval()
        add_record({"epoch": None, "checkpoint": a.checkpoint or pretrained, **m})
        print(json.dumps({k: round(v, 4) for k, v in m.items()}))
        return m

    epochs = a.epochs or int(cfg["runner"]["max_epochs"])
    steps_per_epoch = len(train_loader)
    if a.max_iters_per_epoch:
        steps_per_epoch = min(steps_per_epoch, a.max_iters_per_epoch)
    schedule = MmcvLr(cfg["lr_config"], base_lr, steps_per_epoch, epochs)
    print(f"=> {len(train_set)} train / {len(val_set)} val images, {train_set.num_classes} classes, "
          f"{ctx.world_size} process(es) x {per_gpu} images, {type(optimizer).__name__} lr {base_lr:g}, "
          f"{epochs} epochs x {steps_per_epoch} it")

    def before_step(step: int, total: int) -> None:
        lr = schedule(step)
        for g in optimizer.param_groups:
            g["lr"] = lr

    interval = int(cfg.get("evaluation", {}).get("interval", 1))

    def end_epoch(epoch: int) -> Dict[str, float]:
        if a.no_eval or not ((epoch + 1) % interval == 0 or epoch + 1 == epochs):
            return {}
        m = do_eval()
        add_record({"epoch": epoch + 1, **m})
        return m

    ecfg = EngineConfig(epochs=epochs, output_dir=a.work_dir, amp=cfg.get("amp", "off"), clip_grad=grad_clip(cfg),
                        channels_last=False, print_freq=int(cfg.get("log_interval", 50)),
                        ckpt_names=("latest.pth",), resume=a.resume, max_steps_per_epoch=a.max_iters_per_epoch,
                        desc="det")
    history = train(wrapped, optimizer, train_loader, ecfg, ctx, before_step=before_step, end_epoch=end_epoch)
    final = {k: v for k, v in (history[-1] if history else {}).items() if k.startswith(("bbox_", "segm_"))}
    if ctx.is_main and final:
        parts = [f"{name} AP {final[key] * 100:.1f}" for name, key in (("box", "bbox_mAP"), ("mask", "segm_mAP"))
                 if key in final]
        print("final " + " / ".join(parts)
              + (f" (seed reference {ref.get('box_ap')} / {ref.get('mask_ap')} on COCO)" if ref else ""))
    return final


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="config file (papers/selfsup_det/configs/*.py)")
    p.add_argument("--pretrained", default=None,
                   help="backbone checkpoint (converted or raw SSL checkpoint); 'none' = random init; "
                        "default: the config's `pretrained`")
    p.add_argument("--selfsup", default="auto", help="method of --pretrained (restricts layout recognition)")
    p.add_argument("--work-dir", default="runs/det", help="checkpoints, logs, metrics.json")
    p.add_argument("--data-root", default=None, help="override data.root ('synthetic' = built-in set)")
    p.add_argument("--resume", default="", help="checkpoint to resume from, or 'auto' (work-dir/latest.pth)")
    p.add_argument("--epochs", type=int, default=None, help="override runner.max_epochs")
    p.add_argument("--max-iters-per-epoch", type=int, default=None, help="cap iterations per epoch (smoke runs)")
    p.add_argument("--samples-per-gpu", type=int, default=None, help="override data.samples_per_gpu")
    p.add_argument("--eval-only", action="store_true", help="only evaluate (the init model, or --checkpoint)")
    p.add_argument("--checkpoint", default=None, help="a train_det checkpoint for --eval-only")
    p.add_argument("--no-eval", action="store_true", help="skip evaluation during training")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0 = default)")
    p.add_argument("--cfg-options", nargs="*", default=[], help="override config entries: key.sub=value")
    dist.add_launch_args(p, gpus=True)
    return p


def parse_args(argv=None):
    p = build_parser()
    ns = p.parse_args(argv)
    for flag in ("epochs", "max_iters_per_epoch", "samples_per_gpu"):
        value = getattr(ns, flag)
        if value is not None and value < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be a positive integer, got {value}")
    if ns.threads < 0:
        raise UserError(f"--threads must be >= 0, got {ns.threads}")
    check_flags(ns, p, NO_EFFECT, UNSUPPORTED)
    cfg = apply_overrides(load_config(ns.config), ns.cfg_options)
    for key in ("model", "data", "optimizer", "lr_config", "runner"):
        if key not in cfg:
            raise UserError(f"config '{ns.config}' has no '{key}' section")
    check_config(cfg)
    if ns.data_root is not None:
        cfg["data"]["root"] = ns.data_root
    a = DetArgs(config=ns.config, pretrained=ns.pretrained, selfsup=ns.selfsup, work_dir=ns.work_dir,
                data_root=ns.data_root, resume=ns.resume, epochs=ns.epochs,
                max_iters_per_epoch=ns.max_iters_per_epoch, samples_per_gpu=ns.samples_per_gpu,
                eval_only=ns.eval_only, checkpoint=ns.checkpoint, no_eval=ns.no_eval, seed=ns.seed,
                threads=ns.threads, cfg_options=ns.cfg_options, cfg=cfg)
    return a, ns


@cli_main
def main(argv=None) -> None:
    a, ns = parse_args(argv)
    os.makedirs(a.work_dir, exist_ok=True)  # here, so a bad output path is one line before any process starts
    if ns.dist_url.startswith("tcp://224.66.41.62"):
        ns.dist_url = "env://"  # the MoCo-style default address is a placeholder; use env:// locally
    world = ns.world_size if ns.world_size and ns.world_size > 0 else 1
    rank = ns.rank if ns.rank and ns.rank > 0 else 0
    dist.launch(run, a, multiprocessing_distributed=ns.multiprocessing_distributed, world_size=world, rank=rank,
                dist_url=ns.dist_url, dist_backend=ns.dist_backend, gpus=ns.gpus)


if __name__ == "__main__":
    main()
