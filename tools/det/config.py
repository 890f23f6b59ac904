"""Config files and the mmdet step schedule.

A config is a Python file of plain ``dict`` assignments (mmdet 2.x style). ``_base_ = [...]`` lists files
(relative to the config) merged first; a child's dict entries override the base's recursively, other values
replace them. ``--cfg-options a.b=value`` overrides single entries (values parsed as Python literals).
"""
from __future__ import annotations

import ast
import copy
import inspect
import math
import os
import runpy
from typing import Any, Dict, Iterable, Sequence, Tuple

import torch

from core.errors import UserError


def _merge(base: Dict[str, Any], child: Dict[str, Any]) -> Dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in child.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and not v.get("_delete_", False):
            out[k] = _merge(out[k], v)
        else:
            out[k] = {kk: vv for kk, vv in v.items() if kk != "_delete_"} if isinstance(v, dict) else v
    return out


def load_config(path: str) -> Dict[str, Any]:
    if not os.path.isfile(path):
        raise UserError(f"config '{path}' does not exist")
    try:
        ns = runpy.run_path(path)
    except Exception as e:
        raise UserError(f"config '{path}' could not be read ({e.__class__.__name__}: {e})") from None
    own = {k: v for k, v in ns.items() if not k.startswith("__") and k != "_base_"
           and isinstance(v, (dict, list, tuple, str, int, float, bool, type(None)))}
    bases = ns.get("_base_", [])
    bases = [bases] if isinstance(bases, str) else list(bases)
    cfg: Dict[str, Any] = {}
    for b in bases:
        cfg = _merge(cfg, load_config(os.path.join(os.path.dirname(os.path.abspath(path)), b)))
    return _merge(cfg, own)


def apply_overrides(cfg: Dict[str, Any], options: Iterable[str]) -> Dict[str, Any]:
    for opt in options or ():
        if "=" not in opt:
            raise UserError(f"--cfg-options entry '{opt}' is not key=value")
        key, raw = opt.split("=", 1)
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        node = cfg
        parts = key.split(".")
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        node[parts[-1]] = value
    return cfg


def step_lr_with_warmup(it: int, epoch: int, base_lr: float, steps: Sequence[int], gamma: float = 0.1,
                        warmup_iters: int = 500, warmup_ratio: float = 0.001) -> float:
    """mmdet ``lr_config(policy='step', warmup='linear')`` / mmengine ``LinearLR`` + ``MultiStepLR``:
    ``base * gamma^#{s in steps: epoch >= s}`` times, during the first ``warmup_iters`` global iterations,
    the linear factor ``warmup_ratio + (1 - warmup_ratio) * it / warmup_iters``."""
    lr = base_lr * gamma ** sum(1 for s in steps if epoch >= s)
    if warmup_iters and it < warmup_iters:
        lr *= warmup_ratio + (1.0 - warmup_ratio) * it / warmup_iters
    return lr


def scaled_lr(lr: float, total_batch: int, base_batch_size: int = 16, enable: bool = True) -> float:
    """Linear scaling rule: ``lr`` is for ``base_batch_size`` images (0.02 for 8 GPUs x 2 images)."""
    return lr * total_batch / base_batch_size if enable else lr


# ------------------------------------------------------------------------------------- the config-key surface
# Every key a config may set (dotted; ``x.*`` = any key under ``x``). :func:`check_config` stops with a one-line
# error on any other key, so a key is either read by tools/train_det.py / tools/det or rejected
# (tests/selfsup_det/test_sdet_flags.py checks that each listed key is read). The README table is generated
# from these dicts (:func:`config_table_markdown`).
CONFIG_KEYS = {
    "pretrained": "backbone checkpoint (`--pretrained` overrides it); `None`/'none' = random init",
    "reference.*": "the seed's AP, recorded next to ours in `metrics.json`",
    "model.backbone": "ResNet trunk: resnet50 | resnet18 | resnet_tiny",
    "model.frozen_stages": "mmdet semantics: >= 0 freezes the stem, k also layer1..k; -1 nothing",
    "model.norm": "backbone norm (mmdet `norm_cfg.type`): BN | SyncBN | GN",
    "model.norm_groups": "GN `num_groups` (mmdet's GN configs use 32)",
    "model.norm_eval": "keep backbone BN layers in eval mode",
    "model.fpn_channels": "FPN width (256)",
    "model.anchor_sizes": "anchor size per level (scale 8 x strides 4-64)",
    "model.anchor_ratios": "anchor aspect ratios",
    "model.roi_sampling_ratio": "RoIAlign sampling ratio (0 = adaptive)",
    "model.box_fc_dim": "Shared2FCBBoxHead fc width (1024)",
    "model.mask_conv_dim": "FCNMaskHead conv width (256)",
    "model.min_size": "test (and single-scale train) short side",
    "model.max_size": "long-side cap",
    "model.min_size_train_range": "multi-scale training: short side uniform in [lo, hi]",
    "data.root": "COCO root, or 'synthetic'",
    "data.train.ann_file": "train annotation json (relative to root)",
    "data.train.img_dir": "train image folder",
    "data.val.ann_file": "val annotation json",
    "data.val.img_dir": "val image folder",
    "data.samples_per_gpu": "images per process",
    "data.workers_per_gpu": "DataLoader workers per process",
    "data.flip_prob": "RandomFlip probability",
    "data.filter_empty_gt": "drop train images without an annotation (mmdet 2.x `_filter_imgs`)",
    "data.min_size": "drop train images whose short side is smaller",
    "data.synthetic.num_train": "built-in set: train images",
    "data.synthetic.num_val": "built-in set: val images",
    "data.synthetic.image_size": "built-in set: image side",
    "data.synthetic.seed": "built-in set: seed",
    "data.synthetic.max_objects": "built-in set: objects per image",
    "optimizer.type": "any `torch.optim` class, as mmcv builds it (SGD, Adam, AdamW, ...)",
    "optimizer.lr": "lr for `base_batch_size` images",
    "optimizer.*": "any other argument of the chosen `torch.optim` class (momentum, weight_decay, betas, ...); "
                   "`None` unsets a base-config value",
    "optimizer.base_batch_size": "images that `lr` is meant for (16)",
    "optimizer.auto_scale_lr": "scale lr linearly with the total batch",
    "optimizer_config.grad_clip": "None, or dict(max_norm=M, norm_type=2): clip the gradient norm",
    "lr_config.policy": "mmcv LrUpdaterHook: step | CosineAnnealing | fixed (lower-case names title-cased as mmcv)",
    "lr_config.by_epoch": "schedule progress in epochs (True) or iterations",
    "lr_config.step": "step policy: epoch (or iteration) milestones, or a period",
    "lr_config.gamma": "step policy: factor per milestone",
    "lr_config.min_lr": "step / CosineAnnealing: lr floor (cosine: its end value)",
    "lr_config.min_lr_ratio": "CosineAnnealing: end value as a fraction of lr",
    "lr_config.warmup": "None | constant | linear | exp",
    "lr_config.warmup_iters": "warm-up length (iterations, or epochs with warmup_by_epoch)",
    "lr_config.warmup_ratio": "warm-up start factor",
    "lr_config.warmup_by_epoch": "count warmup_iters in epochs",
    "runner.type": "EpochBasedRunner",
    "runner.max_epochs": "epochs (`--epochs` overrides it)",
    "evaluation.interval": "evaluate every N epochs (and after the last)",
    "evaluation.metric": "'bbox', 'segm' or both",
    "log_interval": "print / log every N iterations",
    "amp": "autocast: off | fp16 | bf16 | auto (CUDA only; box coding stays fp32)",
}

# value sets of the keys that take one of a few values (None = the key absent)
POLICIES = ("Step", "CosineAnnealing", "Fixed")
CONFIG_CHOICES = {
    "model.norm": ("BN", "SyncBN", "GN"),
    "lr_config.policy": ("step", "CosineAnnealing", "fixed"),
    "lr_config.warmup": (None, "constant", "linear", "exp"),
    "runner.type": ("EpochBasedRunner",),
    "evaluation.metric": ("bbox", "segm"),
    "amp": ("off", "fp16", "bf16", "auto"),
}
# what an mmdet config may also say there, and why it stops here with a one-line error
CONFIG_UNSUPPORTED = {
    "model.norm": "mmcv's other norm layers (IN, LN, ...) are not implemented",
    "lr_config.policy": "mmcv's Poly, Exp, Inv, Cyclic, OneCycle, CosineRestart and FlatCosineAnnealing "
                        "policies are not implemented",
    "runner.type": "IterBasedRunner (max_iters) is not implemented; use max_epochs",
    "evaluation.metric": "'proposal' / 'proposal_fast' (RPN recall) are not implemented",
    "optimizer_config.grad_clip": "only norm_type=2 is implemented",
}
# keys accepted with no effect, as in the original (none: every key above is read)
CONFIG_NO_EFFECT: Dict[str, str] = {}


def _leaves(cfg: Dict[str, Any], prefix: str = ""):
    for k, v in cfg.items():
        key = prefix + str(k)
        if isinstance(v, dict) and key not in ("optimizer_config.grad_clip",):
            yield from _leaves(v, key + ".")
        else:
            yield key, v


def _known(key: str) -> bool:
    if key in CONFIG_KEYS:
        return True
    return any(k.endswith(".*") and key.startswith(k[:-1]) for k in CONFIG_KEYS)


def _choice_error(key: str, value: Any) -> UserError:
    ok = ", ".join("None" if c is None else str(c) for c in CONFIG_CHOICES[key])
    why = f"; {CONFIG_UNSUPPORTED[key]}" if key in CONFIG_UNSUPPORTED else ""
    return UserError(f"config {key}={value!r} is not supported (choose {ok}){why}")


def normalise_policy(policy: Any) -> str:
    """mmcv ``register_lr_hook``: an all-lower-case policy is title-cased ('step' -> 'Step')."""
    p = str(policy)
    return p.title() if p == p.lower() else p


def optimizer_class(name: Any):
    cls = getattr(torch.optim, str(name), None)
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)) or str(name) == "Optimizer":
        raise UserError(f"config optimizer.type={name!r} is not a torch.optim optimizer (e.g. SGD, Adam, AdamW)")
    return cls


OWN_OPTIMIZER_KEYS = ("type", "lr", "base_batch_size", "auto_scale_lr")


def optimizer_kwargs(opt_cfg: Dict[str, Any]) -> Dict[str, Any]:
    """The keyword arguments mmcv passes to ``torch.optim.<type>`` (lists become tuples, ``None`` = unset);
    a key the class does not take is a one-line error (mmcv: a TypeError)."""
    cls = optimizer_class(opt_cfg.get("type", "SGD"))
    params = inspect.signature(cls.__init__).parameters
    out = {}
    for k, v in opt_cfg.items():
        if k in OWN_OPTIMIZER_KEYS or v is None:
            continue
        if k not in params or k in ("self", "params"):
            args = ", ".join(p for p in params if p not in ("self", "params"))
            raise UserError(f"config optimizer.{k} is not an argument of torch.optim.{cls.__name__} ({args}); "
                            f"set optimizer.{k}=None to unset a base-config value")
        out[k] = tuple(v) if isinstance(v, list) else v
    return out


def check_config(cfg: Dict[str, Any]) -> None:
    """One-line UserError for an unknown key or a value that cannot work here (see :data:`CONFIG_KEYS`)."""
    for key, value in _leaves(cfg):
        if not _known(key):
            raise UserError(f"unknown config key '{key}' (tools/det/config.py CONFIG_KEYS lists the keys read)")
    m, s = cfg.get("model", {}), cfg.get("lr_config", {})
    if m.get("norm", "BN") not in CONFIG_CHOICES["model.norm"]:
        raise _choice_error("model.norm", m.get("norm"))
    if normalise_policy(s.get("policy", "step")) not in POLICIES:
        raise _choice_error("lr_config.policy", s.get("policy"))
    if s.get("warmup") not in CONFIG_CHOICES["lr_config.warmup"]:
        raise _choice_error("lr_config.warmup", s.get("warmup"))
    if cfg.get("runner", {}).get("type", "EpochBasedRunner") not in CONFIG_CHOICES["runner.type"]:
        raise _choice_error("runner.type", cfg["runner"]["type"])
    metric = cfg.get("evaluation", {}).get("metric", ["bbox", "segm"])
    metrics = [metric] if isinstance(metric, str) else list(metric)
    if not metrics or any(x not in CONFIG_CHOICES["evaluation.metric"] for x in metrics):
        raise _choice_error("evaluation.metric", metric)
    if cfg.get("amp", "off") not in CONFIG_CHOICES["amp"]:
        raise _choice_error("amp", cfg.get("amp"))
    clip = cfg.get("optimizer_config", {}).get("grad_clip")
    if clip is not None:
        if not isinstance(clip, dict) or set(clip) - {"max_norm", "norm_type"} or "max_norm" not in clip:
            raise UserError(f"config optimizer_config.grad_clip={clip!r} must be None or dict(max_norm=M, "
                            "norm_type=2)")
        if float(clip.get("norm_type", 2)) != 2.0:
            raise UserError(f"config optimizer_config.grad_clip norm_type={clip['norm_type']!r} is not supported "
                            f"({CONFIG_UNSUPPORTED['optimizer_config.grad_clip']})")
    optimizer_kwargs(cfg.get("optimizer", {}))
    MmcvLr(s, 1.0, 1, 1)  # validates the schedule's arguments


def eval_metrics(cfg: Dict[str, Any]) -> Tuple[str, ...]:
    metric = cfg.get("evaluation", {}).get("metric", ["bbox", "segm"])
    return (metric,) if isinstance(metric, str) else tuple(metric)


def grad_clip(cfg: Dict[str, Any]) -> float:
    clip = (cfg.get("optimizer_config") or {}).get("grad_clip")
    return float(clip["max_norm"]) if clip else 0.0


class MmcvLr:
    """mmcv ``LrUpdaterHook`` for the policies here, as a function of the global iteration ``it``.

    regular lr (``progress`` = epoch if ``by_epoch`` else iteration, ``max_progress`` likewise):
      * step: ``lr * gamma ** n`` with ``n`` = #milestones <= progress (list) or ``progress // step`` (int),
        floored at ``min_lr``;
      * CosineAnnealing: ``end + 0.5 (lr - end)(1 + cos(pi progress / max_progress))``, ``end`` = ``min_lr`` or
        ``lr * min_lr_ratio`` (exactly one of them);
      * fixed: ``lr``.
    warm-up for ``it < warmup_iters`` (times ``epoch_len`` with ``warmup_by_epoch``), ``r = warmup_ratio``:
    constant ``regular * r``; linear ``regular * (1 - (1 - it / W)(1 - r))``; exp ``regular * r ** (1 - it / W)``.
    """

    def __init__(self, lr_cfg: Dict[str, Any], base_lr: float, iters_per_epoch: int, max_epochs: int):
        self.policy = normalise_policy(lr_cfg.get("policy", "step"))
        self.by_epoch = bool(lr_cfg.get("by_epoch", True))
        self.base_lr, self.epoch_len, self.max_epochs = float(base_lr), max(1, int(iters_per_epoch)), int(max_epochs)
        self.warmup = lr_cfg.get("warmup")
        self.warmup_ratio = float(lr_cfg.get("warmup_ratio", 0.1))
        w = int(lr_cfg.get("warmup_iters", 0) or 0)
        self.warmup_iters = w * self.epoch_len if lr_cfg.get("warmup_by_epoch", False) else w
        if self.warmup is not None:
            if self.warmup not in ("constant", "linear", "exp"):
                raise _choice_error("lr_config.warmup", self.warmup)
            if w <= 0:
                raise UserError(f"config lr_config.warmup_iters must be positive with warmup={self.warmup!r}, got {w}")
            if not 0 < self.warmup_ratio <= 1:
                raise UserError(f"config lr_config.warmup_ratio must be in (0, 1], got {self.warmup_ratio}")
        self.min_lr = lr_cfg.get("min_lr")
        self.gamma = float(lr_cfg.get("gamma", 0.1))
        if self.policy == "Step":
            step = lr_cfg.get("step")
            ok_list = isinstance(step, (list, tuple)) and all(isinstance(s, int) and s > 0 for s in step)
            if not (ok_list or (isinstance(step, int) and step > 0)):
                raise UserError(f"config lr_config.step must be a positive int or a list of positive ints, got {step!r}")
            self.step = list(step) if ok_list else int(step)
        elif self.policy == "CosineAnnealing":
            ratio = lr_cfg.get("min_lr_ratio")
            if (self.min_lr is None) == (ratio is None):
                raise UserError("config lr_config with policy CosineAnnealing needs exactly one of min_lr and "
                                "min_lr_ratio")
            self.min_lr_ratio = ratio
        elif self.policy != "Fixed":
            raise _choice_error("lr_config.policy", lr_cfg.get("policy"))

    def regular(self, it: int) -> float:
        progress = it // self.epoch_len if self.by_epoch else it
        max_progress = self.max_epochs if self.by_epoch else self.max_epochs * self.epoch_len
        if self.policy == "Step":
            n = sum(1 for s in self.step if progress >= s) if isinstance(self.step, list) else progress // self.step
            lr = self.base_lr * self.gamma ** n
            return max(lr, float(self.min_lr)) if self.min_lr is not None else lr
        if self.policy == "CosineAnnealing":
            end = self.base_lr * float(self.min_lr_ratio) if self.min_lr_ratio is not None else float(self.min_lr)
            return end + 0.5 * (self.base_lr - end) * (math.cos(math.pi * progress / max(1, max_progress)) + 1)
        return self.base_lr

    def __call__(self, it: int) -> float:
        lr = self.regular(it)
        if self.warmup is None or it >= self.warmup_iters:
            return lr
        r, f = self.warmup_ratio, it / self.warmup_iters
        if self.warmup == "constant":
            return lr * r
        if self.warmup == "linear":
            return lr * (1 - (1 - f) * (1 - r))
        return lr * r ** (1 - f)


def config_table_markdown() -> str:
    """The README's config-key table (generated; a test checks that the README holds it verbatim)."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    rows = ["| config key | meaning | values that stop with a one-line error |", "|---|---|---|"]
    for k, v in CONFIG_KEYS.items():
        rows.append(f"| `{k}` | {cell(v)} | {cell(CONFIG_UNSUPPORTED.get(k, ''))} |")
    for k, v in CONFIG_NO_EFFECT.items():
        rows.append(f"| `{k}` | accepted, no effect: {cell(v)} | |")
    return "\n".join(rows)
