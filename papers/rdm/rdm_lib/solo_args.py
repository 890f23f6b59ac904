"""Argument surface of solo-learn's ``main_pretrain.py`` / ``main_linear.py`` as used by the RDM scripts
(spec §4b-4d), plus ``--rdm_guard`` and ``--max_steps_per_epoch`` (ours). Parsed flags become a plain
dict via :func:`pretrain_config`."""
from __future__ import annotations

import argparse
from typing import Dict, List

from core.errors import UserError
from rdm_lib.predictor import PRED_LOCATIONS, PRED_TYPES

DATASETS = ("cifar10", "cifar100", "stl10", "imagenet", "imagenet100", "custom")
NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "stl10": 10, "imagenet": 1000, "imagenet100": 100}
# per-method defaults of the solo parsers (proj_output_dim, proj_hidden_dim, pred_hidden_dim)
METHOD_DEFAULTS = {"simsiam": (128, 2048, 512), "rdmsimsiam": (128, 2048, None),
                   "byol": (256, 2048, 512), "rdmbyol": (256, 2048, None)}
SCHEDULERS = ("reduce", "warmup_cosine", "step", "exponential", "none")  # solo BaseMethod._SCHEDULERS
SUPPORTED_SCHEDULERS = ("warmup_cosine", "step", "none")  # the others raise ValueError in configure_optimizers

# Trainer / data / logging flags shared by main_pretrain.py and main_linear.py (see core.flags)
NO_EFFECT_COMMON = {
    "wandb": "logs go to TensorBoard and log.txt; wandb is not used",
    "project": "a wandb project name; wandb is not used",
    "entity": "a wandb entity; wandb is not used",
    "offline": "wandb offline mode; wandb is not used",
    "dali": "DALI is replaced by the torchvision pipeline with the same steps (README, Deviations)",
    "dali_device": "DALI is replaced by the torchvision pipeline, which runs in CPU loader workers",
    "auto_resumer_max_hours": "--auto_resume takes <checkpoint_dir>/.../<name>.ckpt whatever its age",
}
UNSUPPORTED_COMMON: Dict[str, str] = {}


def check_epochs(cfg) -> None:
    """Negative epochs / steps are one-line errors (the original trains nothing and exits 0)."""
    if cfg["max_epochs"] < 0:
        raise UserError(f"--max_epochs must be non-negative, got {cfg['max_epochs']}")
    if cfg.get("max_steps_per_epoch") is not None and cfg["max_steps_per_epoch"] < 1:
        raise UserError(f"--max_steps_per_epoch must be at least 1, got {cfg['max_steps_per_epoch']}")
    if cfg["checkpoint_frequency"] < 1:
        raise UserError(f"--checkpoint_frequency must be at least 1, got {cfg['checkpoint_frequency']}")


def str2bool(v):
    if isinstance(v, bool):
        return v
    if v.lower() in ("yes", "true", "t", "1"):
        return True
    if v.lower() in ("no", "false", "f", "0"):
        return False
    raise argparse.ArgumentTypeError("boolean value expected")


def parse_devices(v: str) -> List[int]:
    """Lightning ``--devices``: ``0`` / ``0,1`` / ``0,1,`` (a list of device ids)."""
    try:
        return [int(x) for x in str(v).split(",") if x.strip() != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid --devices '{v}' (expected e.g. 0 or 0,1)") from None


def add_trainer_args(p: argparse.ArgumentParser) -> None:
    """The Lightning Trainer flags the scripts pass."""
    p.add_argument("--max_epochs", type=int, default=1000)
    p.add_argument("--devices", type=parse_devices, default=[0], help="device ids, e.g. 0 or 0,1")
    p.add_argument("--accelerator", default="gpu", help="gpu or cpu (gpu falls back to cpu without CUDA)")
    p.add_argument("--strategy", default=None, help="ddp when several devices")
    p.add_argument("--precision", default="32", help="16 (fp16 AMP on CUDA), bf16 or 32")
    p.add_argument("--sync_batchnorm", action="store_true")
    p.add_argument("--num_nodes", type=int, default=1)
    p.add_argument("--max_steps_per_epoch", type=int, default=None,
                   help="(ours) cap on steps per epoch, also on validation batches; for quick runs")


def add_dataset_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", choices=DATASETS, required=True)
    p.add_argument("--data_dir", required=True, help="dataset root, or 'synthetic' for the built-in set")
    p.add_argument("--train_dir", default=None)
    p.add_argument("--val_dir", default=None)
    p.add_argument("--dali", action="store_true", help="accepted; the torchvision pipeline is used")
    p.add_argument("--dali_device", default="gpu")
    p.add_argument("--num_workers", type=int, default=4)
    p.add_argument("--batch_size", type=int, default=128, help="per device")
    p.add_argument("--num_samples", type=int, default=None,
                   help="(ours) train images of a built-in set (synthetic: 5000 when not given; digits: a prefix)")


def add_augmentation_args(p: argparse.ArgumentParser) -> None:
    """``solo/args/dataset.py`` augmentation flags; one value per pipeline (a single value is broadcast)."""
    f = dict(type=float, nargs="+")
    p.add_argument("--num_crops_per_aug", type=int, nargs="+", default=[2])
    p.add_argument("--brightness", required=True, **f)
    p.add_argument("--contrast", required=True, **f)
    p.add_argument("--saturation", required=True, **f)
    p.add_argument("--hue", required=True, **f)
    p.add_argument("--color_jitter_prob", default=[0.8], **f)
    p.add_argument("--gray_scale_prob", default=[0.2], **f)
    p.add_argument("--horizontal_flip_prob", default=[0.5], **f)
    p.add_argument("--gaussian_prob", default=[0.5], **f)
    p.add_argument("--solarization_prob", default=[0.0], **f)
    p.add_argument("--equalization_prob", default=[0.0], **f)
    p.add_argument("--crop_size", type=int, nargs="+", default=[224])
    p.add_argument("--min_scale", default=[0.08], **f)
    p.add_argument("--max_scale", default=[1.0], **f)


def add_optim_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--optimizer", choices=("sgd", "lars", "adam", "adamw"), required=True)
    p.add_argument("--lr", type=float, default=0.3)
    p.add_argument("--classifier_lr", type=float, default=0.3)
    p.add_argument("--weight_decay", type=float, default=0.0001)
    p.add_argument("--exclude_bias_n_norm", action="store_true")
    p.add_argument("--grad_clip_lars", action="store_true")
    p.add_argument("--eta_lars", type=float, default=1e-3)
    p.add_argument("--scheduler", choices=SCHEDULERS, default="reduce")
    p.add_argument("--lr_decay_steps", type=int, nargs="+", default=None)
    p.add_argument("--min_lr", type=float, default=0.0)
    p.add_argument("--warmup_start_lr", type=float, default=3e-5)
    p.add_argument("--warmup_epochs", type=int, default=10)


def add_logging_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", default="run")
    p.add_argument("--project", default=None)
    p.add_argument("--entity", default=None)
    p.add_argument("--wandb", action="store_true", help="accepted; logs go to TensorBoard + log.txt")
    p.add_argument("--offline", action="store_true")
    p.add_argument("--save_checkpoint", action="store_true")
    p.add_argument("--checkpoint_dir", default="trained_models")
    p.add_argument("--checkpoint_frequency", type=int, default=1)
    p.add_argument("--auto_resume", action="store_true")
    p.add_argument("--auto_resumer_max_hours", type=int, default=36)
    p.add_argument("--resume_from_checkpoint", default=None)


def pretrain_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="solo-learn pretraining (SimSiam / BYOL / RDM-SimSiam / RDM-BYOL)")
    add_trainer_args(p)
    add_dataset_args(p)
    add_augmentation_args(p)
    add_optim_args(p)
    add_logging_args(p)
    p.add_argument("--method", required=True, choices=tuple(METHOD_DEFAULTS))
    p.add_argument("--backbone", default="resnet18", help="resnet18, resnet50, resnet_tiny, ...")
    p.add_argument("--zero_init_residual", action="store_true")
    p.add_argument("--proj_output_dim", type=int, default=None)
    p.add_argument("--proj_hidden_dim", type=int, default=None)
    p.add_argument("--pred_hidden_dim", type=int, default=None, help="simsiam/byol only")
    p.add_argument("--pred_type", default="poly", choices=PRED_TYPES, help="rdm* only")
    p.add_argument("--pred_location", default="online", choices=PRED_LOCATIONS, help="rdm* only")
    p.add_argument("--sigma", type=float, default=1.0, help="rdm* only: power of the power filter")
    p.add_argument("--rdm_guard", dest="rdm_guard", action="store_true",
                   help="(ours) zero-singular-value guard: drop round-off singular directions where the filter is "
                        "unbounded at 0 (log, negative powers, 1 + sigma <= 0 in target mode); off = the original "
                        "formula, which gives inf/NaN there")
    p.add_argument("--no_rdm_guard", dest="rdm_guard", action="store_false",
                   help="(ours) the original filter without guard: the default; kept for older commands")
    p.add_argument("--base_tau_momentum", type=float, default=0.99)
    p.add_argument("--final_tau_momentum", type=float, default=1.0)
    p.add_argument("--momentum_classifier", action="store_true")
    p.add_argument("--knn_eval", action="store_true", help="accepted; online kNN is not run")
    p.add_argument("--knn_k", type=int, default=20)
    p.add_argument("--seed", type=int, default=5, help="seed_everything(5) as solo-learn")
    return p


def per_pipeline(args, name: str, n: int) -> list:
    v = getattr(args, name)
    if len(v) == 1:
        return v * n
    if len(v) != n:
        raise UserError(f"--{name} has {len(v)} values but there are {n} augmentation pipelines")
    return list(v)


def pretrain_config(args) -> Dict:
    """Flags -> plain dict with the derived values solo's ``additional_setup_pretrain`` computes."""
    cfg = dict(vars(args))
    if args.method.startswith("rdm") and args.pred_hidden_dim is not None:
        raise UserError("--pred_hidden_dim is not a flag of the RDM methods (they have no learned predictor)")
    out_d, hid_d, pred_d = METHOD_DEFAULTS[args.method]
    cfg["proj_output_dim"] = args.proj_output_dim or out_d
    cfg["proj_hidden_dim"] = args.proj_hidden_dim or hid_d
    cfg["pred_hidden_dim"] = args.pred_hidden_dim or pred_d
    n = len(args.num_crops_per_aug)
    keys = ("brightness", "contrast", "saturation", "hue", "color_jitter_prob", "gray_scale_prob",
            "horizontal_flip_prob", "gaussian_prob", "solarization_prob", "equalization_prob", "crop_size",
            "min_scale", "max_scale")
    cfg["pipelines"] = [dict(zip(keys, vals)) for vals in zip(*(per_pipeline(args, k, n) for k in keys))]
    for pl, c in zip(cfg["pipelines"], args.num_crops_per_aug):
        pl["num_crops"] = c
    if sum(args.num_crops_per_aug) != 2:
        raise UserError("these methods use exactly 2 crops (e.g. --num_crops_per_aug 1 1 or 2)")
    if args.scheduler not in SUPPORTED_SCHEDULERS:
        raise UserError(f"--scheduler {args.scheduler} stops the original too (solo's configure_optimizers "
                        f"raises ValueError for it): choose one of {', '.join(SUPPORTED_SCHEDULERS)}")
    if args.scheduler == "step" and not args.lr_decay_steps:
        raise UserError("--scheduler step needs --lr_decay_steps")
    if args.batch_size < 2:
        raise UserError("--batch_size must be at least 2 (batch statistics)")
    cfg["guard"] = args.rdm_guard
    check_epochs(cfg)
    return cfg
