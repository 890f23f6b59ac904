"""Config files (YAML content in ``configs/*.py``, read with ``yaml.safe_load`` as the original ``pretrain.py``)
plus ``key=value`` overrides, checked into a plain attribute dict.

The method and its form come from the ``loss`` name (the original's ``getattr(self, cfg.loss)``); the key
``form`` (``loss`` | ``grad`` | ``grad_mm``) switches the same method to another form in one override.
"""
from __future__ import annotations

import os
from typing import Dict, Iterable, Optional, Tuple

import yaml

from core.errors import UserError
from core.optim.schedules import ema_momentum

METHODS = ("moco", "simclr", "simsiam", "byol", "vicreg", "barlow_twins", "unigrad")
FORMS = ("loss", "grad", "grad_mm")

# loss name -> (method, form); the four names of the original release keep their meaning.
LOSS_NAMES: Dict[str, Tuple[str, str]] = {
    "loss_moco": ("moco", "loss"),
    "loss_moco_grad": ("moco", "grad"),
    "loss_moco_grad_mm": ("moco", "grad_mm"),
    "loss_simclr": ("simclr", "loss"),
    "loss_simclr_grad": ("simclr", "grad"),
    "loss_simclr_grad_mm": ("simclr", "grad_mm"),  # original
    "loss_simsiam": ("simsiam", "loss"),
    "loss_simsiam_directpred_grad": ("simsiam", "grad"),
    "loss_simsiam_directpred_grad_mm": ("simsiam", "grad_mm"),
    "loss_byol": ("byol", "loss"),
    "loss_byol_directpred_grad_nomm": ("byol", "grad"),
    "loss_byol_directpred_grad": ("byol", "grad_mm"),  # original (uses the momentum encoder)
    "loss_vicreg": ("vicreg", "loss"),
    "loss_vicreg_grad": ("vicreg", "grad"),
    "loss_vicreg_grad_mm": ("vicreg", "grad_mm"),
    "loss_barlow_twins": ("barlow_twins", "loss"),
    "loss_barlow_twins_grad": ("barlow_twins", "grad"),
    "loss_barlow_twins_grad_mm": ("barlow_twins", "grad_mm"),  # original
    "loss_unigrad_nomm": ("unigrad", "grad"),
    "loss_unigrad": ("unigrad", "grad_mm"),  # original
}
FORM_TO_NAME = {v: k for k, v in LOSS_NAMES.items()}

# Keys of the original configs (every one is kept, also the unused num_layers / eps of unigrad).
ORIGINAL_KEYS = (
    "seed", "launcher", "port", "train_datadir", "test_datadir", "n_workers", "arch", "projector_input_dim",
    "projector_hidden_dim", "projector_output_dim", "num_layers", "base_momentum", "resume_path", "base_lr",
    "whole_batch_size", "momentum", "weight_decay", "epochs", "warmup_epochs", "loss", "lambd", "rho", "eps",
    "moco_t", "print_freq", "test_freq", "save_freq", "knn_k", "knn_t", "knn_eval", "zero_init_residual",
    "debug")

# Keys added here, with their defaults (README "Config keys").
DEFAULTS = {
    "zero_init_residual": True,
    "debug": False,
    "form": None,  # loss | grad | grad_mm; None = the form of the `loss` name
    "queue_size": 65536,  # MoCo forms
    "predictor_hidden_dim": None,  # original SimSiam/BYOL losses; None = 512 (SimSiam) / 4096 (BYOL)
    "sim_coeff": 25.0, "std_coeff": 25.0, "cov_coeff": 1.0,  # original VICReg loss
    "bt_lambd": 0.0051,  # original Barlow Twins loss
    "cutmix": False, "cutmix_alpha": 1.0,
    "image_size": 224,  # crop size; the test transform is Resize(size*256/224) + CenterCrop(size)
    "num_samples": None,  # size of the synthetic train set (data path `synthetic`)
    "max_steps_per_epoch": None,  # shorten every epoch (tests / smoke runs)
    "work_dir": None,  # default ./exp/<config stem>
    "diag_freq": None,  # collapse diagnostics every N steps; None = print_freq
    "knn_freq": None,  # kNN monitor every N epochs (and at the end); None/0 = off, as the original
    "amp": True,  # autocast + GradScaler on CUDA (always off on CPU)
    "mm_schedule": "cos",  # EMA momentum schedule of the original adjust_mm: cos (used) | const
}

MM_SCHEDULES = ("cos", "const")

REQUIRED = ("seed", "train_datadir", "test_datadir", "n_workers", "arch", "projector_hidden_dim",
            "projector_output_dim", "base_momentum", "base_lr", "whole_batch_size", "momentum", "weight_decay",
            "epochs", "warmup_epochs", "loss", "print_freq", "save_freq", "knn_k", "knn_t")

# per method and form: keys that must hold a number
NEEDS = {
    ("unigrad", "grad"): ("lambd", "rho"), ("unigrad", "grad_mm"): ("lambd", "rho"),
    ("simclr", "loss"): ("moco_t",), ("simclr", "grad"): ("moco_t",), ("simclr", "grad_mm"): ("moco_t",),
    ("moco", "loss"): ("moco_t", "queue_size"), ("moco", "grad"): ("moco_t", "queue_size"),
    ("moco", "grad_mm"): ("moco_t", "queue_size"),
    ("simsiam", "grad"): ("rho", "eps"), ("simsiam", "grad_mm"): ("rho", "eps"),
    ("byol", "grad"): ("rho", "eps"), ("byol", "grad_mm"): ("rho", "eps"),
    ("vicreg", "grad"): ("lambd",), ("vicreg", "grad_mm"): ("lambd",),
    ("barlow_twins", "grad"): ("lambd",), ("barlow_twins", "grad_mm"): ("lambd",),
    ("vicreg", "loss"): ("sim_coeff", "std_coeff", "cov_coeff"), ("barlow_twins", "loss"): ("bt_lambd",),
}


class Config(dict):
    """dict with attribute access (the original used EasyDict)."""

    def __getattr__(self, k):
        try:
            return self[k]
        except KeyError:
            raise AttributeError(k) from None

    def __setattr__(self, k, v):
        self[k] = v


def parse_value(text: str):
    """YAML scalar semantics, except that ``1e-4`` (a string for YAML 1.1) becomes a float."""
    try:
        v = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    return v


def parse_overrides(items: Iterable[str]) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"override '{item}' is not of the form key=value")
        k, v = item.split("=", 1)
        k = k.strip().lstrip("-").replace("-", "_")
        if not k:
            raise UserError(f"override '{item}' has an empty key")
        out[k] = parse_value(v)
    return out


def load_config(path: str, overrides: Optional[Iterable[str]] = None) -> Config:
    """Read a config file, apply ``key=value`` overrides, fill defaults, resolve method/form and check it."""
    if not os.path.isfile(path):
        raise UserError(f"config file '{path}' does not exist")
    try:
        with open(path) as f:
            raw = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise UserError(f"config '{path}' is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise UserError(f"config '{path}' does not hold a mapping of keys")
    cfg = Config(DEFAULTS)
    cfg.update(raw)
    ov = parse_overrides(overrides or [])
    known = set(ORIGINAL_KEYS) | set(DEFAULTS)
    unknown = sorted(set(ov) - known)
    if unknown:
        raise UserError(f"unknown config key(s) {unknown} in overrides; known keys: {sorted(known)}")
    unknown = sorted(set(raw) - known)
    if unknown:
        raise UserError(f"unknown config key(s) {unknown} in '{path}'")
    cfg.update(ov)
    cfg.config_path = path
    return check(cfg)


def check(cfg: Config) -> Config:
    missing = [k for k in REQUIRED if cfg.get(k) is None]
    if missing:
        raise UserError(f"config is missing required key(s) {missing}")
    if cfg.loss not in LOSS_NAMES:
        raise UserError(f"unknown loss '{cfg.loss}'; choose one of {sorted(LOSS_NAMES)}")
    method, form = LOSS_NAMES[cfg.loss]
    if cfg.get("form") is not None:
        if cfg.form not in FORMS:
            raise UserError(f"form must be one of {FORMS}, got '{cfg.form}'")
        if (method, cfg.form) not in FORM_TO_NAME:
            raise UserError(f"method '{method}' has no form '{cfg.form}'")
        form = cfg.form
        cfg.loss = FORM_TO_NAME[(method, form)]
    cfg.method, cfg.form = method, form
    if cfg.predictor_hidden_dim is None:
        cfg.predictor_hidden_dim = {"simsiam": 512, "byol": 4096}.get(method)
    for k in NEEDS.get((method, form), ()):
        if not isinstance(cfg.get(k), (int, float)) or isinstance(cfg.get(k), bool):
            raise UserError(f"{cfg.loss} needs a number for '{k}', got {cfg.get(k)!r}")
        if k == "rho" and not 0.0 <= cfg.rho <= 1.0:
            raise UserError(f"'rho' (the moving-average rate of F) must lie in [0, 1], got {cfg.rho!r}")
        if k == "moco_t" and cfg.moco_t <= 0:
            raise UserError(f"'moco_t' (the temperature) must be positive, got {cfg.moco_t!r}")
    for k in ("whole_batch_size", "epochs", "print_freq", "save_freq", "knn_k", "n_workers", "image_size"):
        if not isinstance(cfg[k], int) or isinstance(cfg[k], bool) or cfg[k] < (0 if k == "n_workers" else 1):
            raise UserError(f"'{k}' must be a positive integer, got {cfg[k]!r}")
    for k in ("base_lr", "momentum", "weight_decay", "base_momentum", "knn_t"):
        if not isinstance(cfg[k], (int, float)) or isinstance(cfg[k], bool):
            raise UserError(f"'{k}' must be a number, got {cfg[k]!r}")
    if cfg.max_steps_per_epoch is not None and (not isinstance(cfg.max_steps_per_epoch, int)
                                                or cfg.max_steps_per_epoch < 1):
        raise UserError(f"'max_steps_per_epoch' must be a positive integer, got {cfg.max_steps_per_epoch!r}")
    # the remaining integer / flag keys (None = their default where the key allows it)
    for k, lo, optional in (("projector_hidden_dim", 1, False), ("projector_output_dim", 1, False),
                            ("queue_size", 1, False), ("projector_input_dim", 1, True),
                            ("predictor_hidden_dim", 1, True), ("num_samples", 1, True), ("diag_freq", 0, True),
                            ("knn_freq", 0, True)):
        v = cfg.get(k)
        if optional and v is None:
            continue
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            raise UserError(f"'{k}' must be an integer >= {lo}{' or null' if optional else ''}, got {v!r}")
    for k in ("cutmix", "amp", "knn_eval", "zero_init_residual"):
        if not isinstance(cfg.get(k), bool):
            raise UserError(f"'{k}' must be true or false, got {cfg.get(k)!r}")
    if not isinstance(cfg.cutmix_alpha, (int, float)) or isinstance(cfg.cutmix_alpha, bool) or cfg.cutmix_alpha < 0:
        raise UserError(f"'cutmix_alpha' must be a number >= 0, got {cfg.cutmix_alpha!r}")
    w = cfg.warmup_epochs
    if not isinstance(w, (int, float)) or isinstance(w, bool) or w < 0:
        # no upper bound: as the original, warmup_epochs >= epochs warms up linearly for the whole run
        raise UserError(f"'warmup_epochs' must be a number >= 0, got {w!r}")
    if cfg.cutmix and method != "unigrad":
        raise UserError("cutmix is implemented for the UniGrad forms only")
    if cfg.mm_schedule not in MM_SCHEDULES:
        raise UserError(f"mm_schedule must be one of {MM_SCHEDULES}, got {cfg.mm_schedule!r}")
    if cfg.get("launcher") not in (None, "pytorch", "slurm"):
        raise UserError(f"launcher must be 'pytorch' or 'slurm', got {cfg.launcher!r}")
    if cfg.work_dir is None:
        stem = os.path.splitext(os.path.basename(cfg.config_path))[0]
        cfg.work_dir = os.path.join(".", "exp", stem)
    if cfg.diag_freq is None:
        cfg.diag_freq = cfg.print_freq
    return cfg


def adjust_mm(base_mm: float, step: int, total_steps: int, schedule: str = "cos") -> float:
    """EMA momentum at ``step`` (original ``Pretrainer.adjust_mm``): ``cos`` = 1 - (1 - base)(cos(pi step / T)
    + 1) / 2 (what the original always runs), ``const`` = base at every step (its other branch)."""
    if schedule == "cos":
        return ema_momentum(base_mm, step, total_steps)
    if schedule == "const":
        return float(base_mm)
    raise UserError(f"mm_schedule must be one of {MM_SCHEDULES}, got {schedule!r}")


def surface_parser(parser=None):
    """The config keys as options of an argparse parser (added to ``parser`` if given): the surface that the
    scripts' ``NO_EFFECT`` / ``UNSUPPORTED`` lists and ``tests/flag_surface.py`` check. Defaults: the values of
    the released configs for the keys no code reads, this file's DEFAULTS for the added keys, else None."""
    import argparse

    p = parser or argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("config keys (key=value)")
    released = {"num_layers": 3, "test_freq": 10}
    for k in dict.fromkeys(ORIGINAL_KEYS + tuple(DEFAULTS)):
        g.add_argument(f"--{k}", dest=k, default=released.get(k, DEFAULTS.get(k)), help=argparse.SUPPRESS)
    return p


def uses_momentum_encoder(method: str, form: str) -> bool:
    """grad_mm forms, and the original MoCo / BYOL losses."""
    return form == "grad_mm" or (form == "loss" and method in ("moco", "byol"))

