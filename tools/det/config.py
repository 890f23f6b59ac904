"""Config files and the mmdet step schedule.

A config is a Python file of plain ``dict`` assignments (mmdet 2.x style). ``_base_ = [...]`` lists files
(relative to the config) merged first; a child's dict entries override the base's recursively, other values
replace them. ``--cfg-options a.b=value`` overrides single entries (values parsed as Python literals).
"""
from __future__ import annotations

import ast
import copy
import os
import runpy
from typing import Any, Dict, Iterable, Sequence

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
