"""Test hooks for the contract tests (``tests/contract``); every one is off unless its variable is set.

``SSL_ENGINE_PROBE=DIR``: each rank of a training loop writes ``DIR/<loop>_rank<r>.pt`` when the loop ends:
the names of trainable parameters that the optimizer does not hold (by identity), the model's and every
``setup_run`` teacher's state after set-up (resume included), after the first step and at the end, the loss of
every step, and the host reads (:mod:`core.engine.syncs`) inside the steps, print boundaries excluded; reads
made in torchvision's files and reads made while the loader yields a batch (the data transforms with
``num_workers=0``) are counted apart.
``SSL_ENGINE_KILL_AT=N``: the process kills itself with SIGKILL (``kill -9``) before global step ``N``.
``SSL_ENGINE_FAULT=R:N``: rank ``R`` raises a UserError before global step ``N`` (an error one rank meets).
``SSL_ENGINE_KILL_IN_WRITE=K``: SIGKILL during the ``K``-th atomic checkpoint write or copy of the process
(1-based), after its temp file is written and before it is renamed onto the target.
"""
from __future__ import annotations

import contextlib
import os
import signal
from typing import Any, Dict, Iterable, List, Optional

import torch
import torch.nn as nn

TORCHVISION = ("/torchvision/",)  # torchvision's own reads (detection transforms, data transforms): counted apart
_TEACHERS: Dict[str, nn.Module] = {}
_WRITES = [0]


def note_teachers(teachers: Dict[str, nn.Module]) -> None:
    """Called by ``setup_run``: the teachers whose states a probe records (kept only while probing)."""
    if os.environ.get("SSL_ENGINE_PROBE"):
        _TEACHERS.update(teachers)


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def kill_point(step: int, rank: int = 0) -> None:
    """Before global step ``step``: ``SSL_ENGINE_KILL_AT`` (SIGKILL) and ``SSL_ENGINE_FAULT`` (a UserError)."""
    at = os.environ.get("SSL_ENGINE_KILL_AT")
    if at is not None and int(at) == step:
        _kill()
    fault = os.environ.get("SSL_ENGINE_FAULT")
    if fault and tuple(int(v) for v in fault.split(":")) == (rank, step):
        from core.errors import UserError

        raise UserError(f"injected fault on rank {rank} at step {step}")


def write_point() -> None:
    """Called by the atomic writer between writing its temp file and renaming it."""
    at = os.environ.get("SSL_ENGINE_KILL_IN_WRITE")
    if at is None:
        return
    _WRITES[0] += 1
    if _WRITES[0] == int(at):
        _kill()


def _state(module: nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


class Probe:
    """What one training loop records (see the module docstring)."""

    def __init__(self, folder: str, name: str, model: nn.Module, optimizer, rank: int):
        self.path = os.path.join(folder, f"{name}_rank{rank}.pt")
        self.model, self.optimizer = model, optimizer
        held = {id(p) for g in optimizer.param_groups for p in g["params"]}
        self.rec: Dict[str, Any] = {
            "untracked": [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in held],
            "trainable": [n for n, p in model.named_parameters() if p.requires_grad],
            "losses": [], "reads": 0, "read_sites": [], "fetch_reads": 0, "fetch_sites": [],
            "torchvision_reads": 0, "torchvision_fetch_reads": 0,
        }
        self._snap("start")

    @classmethod
    def from_env(cls, name: str, model: nn.Module, optimizer, rank: int) -> Optional["Probe"]:
        folder = os.environ.get("SSL_ENGINE_PROBE")
        return cls(folder, name, model, optimizer, rank) if folder else None

    def _snap(self, when: str) -> None:
        self.rec[when] = _state(self.model)
        self.rec[f"teachers_{when}"] = {k: _state(t) for k, t in _TEACHERS.items()}

    def batches(self, loader: Iterable) -> Iterable:
        """The loader's batches, counting the host reads made while each one is produced."""
        from core.engine.syncs import count_host_syncs

        it = iter(loader)
        while True:
            with count_host_syncs(exclude=TORCHVISION) as c:
                try:
                    batch = next(it)
                except StopIteration:
                    return
            self._add(c, "fetch")
            yield batch

    def _add(self, counter, kind: str) -> None:
        key = "fetch_reads" if kind == "fetch" else "reads"
        self.rec[key] += counter.count
        self.rec["torchvision_" + key] += counter.excluded
        sites: List[str] = self.rec["fetch_sites" if kind == "fetch" else "read_sites"]
        sites.extend(counter.where[:max(0, 16 - len(sites))])

    @contextlib.contextmanager
    def step(self):
        """Count the host reads of one step (up to its print boundary)."""
        from core.engine.syncs import count_host_syncs

        with count_host_syncs(exclude=TORCHVISION) as c:
            yield
        self._add(c, "step")

    def after_step(self, step: int, loss: torch.Tensor) -> None:
        self.rec["losses"].append((step, float(loss.detach())))
        if "first" not in self.rec:
            self._snap("first")

    def finish(self) -> None:
        self._snap("end")
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        torch.save(self.rec, self.path)


@contextlib.contextmanager
def maybe_step(probe: Optional[Probe]):
    if probe is None:
        yield
    else:
        with probe.step():
            yield
