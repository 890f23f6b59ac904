"""Checkpoint I/O: atomic writes (temp file + rename) and readable load errors."""
from __future__ import annotations

import os
import random
import tempfile
from typing import Any, Dict

import numpy as np
import torch

from core.errors import UserError


def save_checkpoint(state: Dict[str, Any], path: str) -> str:
    """Write ``state`` with ``torch.save`` to a temp file in the same folder, then ``os.replace`` it onto
    ``path``: a crash mid-write never leaves a truncated checkpoint."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=".pth", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def load_checkpoint(path: str, map_location="cpu") -> Dict[str, Any]:
    """``torch.load`` with a one-line UserError for a missing or unreadable file."""
    if not path or not os.path.isfile(path):
        raise UserError(f"checkpoint '{path}' does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # truncated zip, pickle errors, ...
        raise UserError(f"checkpoint '{path}' could not be read ({e.__class__.__name__}: {e})") from None


def rng_state() -> Dict[str, Any]:
    """Every RNG that training touches (python, numpy, torch CPU, CUDA if present)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
