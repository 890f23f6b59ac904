"""Checkpoint I/O: atomic writes (temp file + rename) and readable load errors."""
from __future__ import annotations

import glob
import os
import random
import shutil
import tempfile
import time
from typing import Any, Dict

import numpy as np
import torch

from core.engine.probe import write_point
from core.errors import UserError


def save_checkpoint(state: Dict[str, Any], path: str) -> str:
    """Write ``state`` with ``torch.save`` to a temp file in the same folder, then ``os.replace`` it onto
    ``path``: a crash mid-write never leaves a truncated checkpoint."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    return _atomic_write(path, lambda f: torch.save(state, f))


def copy_checkpoint(src: str, dst: str) -> str:
    """Copy ``src`` onto ``dst`` atomically (temp file + ``os.replace``): a kill mid-copy leaves ``dst`` as it was."""
    def write(f):
        with open(src, "rb") as s:
            shutil.copyfileobj(s, f, 16 << 20)
    return _atomic_write(dst, write)


TMP_PREFIX = ".tmp_"


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _atomic_write(path: str, write) -> str:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=".pth", dir=folder)
    try:
        os.fchmod(fd, _umask_mode())  # mkstemp makes 0600 files; checkpoints follow the umask like open() does
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        write_point()  # a contract-test kill point (core.engine.probe), off by default
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def remove_stale_temp_files(folder: str, older_than_s: float = 0.0) -> list:
    """Delete the temp files that a process killed during :func:`save_checkpoint` left in ``folder``
    (called by the engine at start-up on the main rank, before anything writes there)."""
    gone = []
    now = time.time()
    for p in glob.glob(os.path.join(folder, TMP_PREFIX + "*.pth")):
        try:
            if now - os.path.getmtime(p) >= older_than_s:
                os.remove(p)
                gone.append(p)
        except OSError:
            pass
    return gone


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
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # this process's own device only
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if isinstance(cuda, (list, tuple)):  # older checkpoints: every visible device; take this process's
            cuda = cuda[torch.cuda.current_device()] if torch.cuda.current_device() < len(cuda) else None
        if cuda is not None:
            torch.cuda.set_rng_state(cuda)
