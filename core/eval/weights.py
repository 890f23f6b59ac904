"""Loading backbone weights from checkpoints of many layouts.

Recognised containers: a raw state dict, or a dict with ``backbone`` / ``state_dict`` / ``model`` /
``teacher`` (first found, in that order). Recognised key prefixes: ``module.``, ``encoder_q.``,
``encoder.``, ``backbone.``, ``momentum_encoder.`` and their ``module.`` forms; the prefix that matches the
most model keys wins. Mismatches raise a one-line UserError listing missing and unexpected keys.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, Optional, Sequence

import torch
import torch.nn as nn

from core.engine.checkpoint import load_checkpoint
from core.errors import UserError

CONTAINER_KEYS = ("backbone", "state_dict", "model", "teacher")
PREFIXES = ("", "module.", "encoder_q.", "module.encoder_q.", "encoder.", "module.encoder.", "backbone.",
            "module.backbone.", "online_encoder.", "module.online_encoder.")


def unwrap_container(obj: Any) -> Dict[str, torch.Tensor]:
    """The state dict inside a checkpoint object."""
    if isinstance(obj, dict):
        for k in CONTAINER_KEYS:
            if k in obj and isinstance(obj[k], dict):
                return obj[k]
        if obj and all(torch.is_tensor(v) for v in obj.values()):
            return obj
    keys = sorted(obj)[:10] if isinstance(obj, dict) else type(obj).__name__
    raise UserError(f"unrecognised checkpoint layout: no state dict found (top-level keys: {keys})")


def best_prefix(state: Dict[str, Any], wanted: Iterable[str], prefixes: Sequence[str] = PREFIXES) -> str:
    wanted = set(wanted)
    scores = {p: sum(1 for k in state if k.startswith(p) and k[len(p):] in wanted) for p in prefixes}
    return max(prefixes, key=lambda p: (scores[p], len(p)))


def extract_backbone_state(state: Dict[str, Any], wanted: Iterable[str], prefix: Optional[str] = None,
                           ignore: Sequence[str] = ("fc.", "head.")) -> Dict[str, Any]:
    """Strip the best-matching (or the given) prefix, dropping keys that start with ``ignore``."""
    wanted = [k for k in wanted if not k.startswith(tuple(ignore))]
    p = best_prefix(state, wanted) if prefix is None else prefix
    out = {k[len(p):]: v for k, v in state.items() if k.startswith(p)}
    return {k: v for k, v in out.items() if not k.startswith(tuple(ignore))}


def load_backbone_weights(module: nn.Module, source, *, prefix: Optional[str] = None,
                          ignore: Sequence[str] = ("fc.", "head."), strict: bool = True,
                          key_map: Optional[Callable[[Dict], Dict]] = None) -> Dict[str, list]:
    """Load backbone weights into ``module`` from a path or a checkpoint object.

    ``ignore``: module keys that need not be present (the classifier). With ``strict`` every other module key
    must be found and nothing unexpected may remain; otherwise a UserError lists both sets.
    """
    obj = load_checkpoint(source) if isinstance(source, str) else source
    state = unwrap_container(obj)
    if key_map is not None:
        state = key_map(state)
    target = module.state_dict()
    sd = extract_backbone_state(state, target.keys(), prefix, ignore)
    missing = sorted(k for k in target if k not in sd and not k.startswith(tuple(ignore)))
    unexpected = sorted(k for k in sd if k not in target)
    if strict and (missing or unexpected):
        raise UserError(f"checkpoint keys do not match the backbone: {len(missing)} missing {missing[:4]}, "
                        f"{len(unexpected)} unexpected {unexpected[:4]} (top-level keys seen: "
                        f"{sorted(state)[:4]})")
    bad = [k for k in sd if k in target and sd[k].shape != target[k].shape]
    if bad:
        raise UserError(f"checkpoint tensor shapes do not match the backbone for {len(bad)} keys, e.g. "
                        f"{bad[0]}: {tuple(sd[bad[0]].shape)} vs {tuple(target[bad[0]].shape)}")
    module.load_state_dict({k: v for k, v in sd.items() if k in target}, strict=False)
    return {"missing": missing, "unexpected": unexpected}
