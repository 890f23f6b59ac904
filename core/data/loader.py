"""DataLoader construction: distributed sampling, drop_last, per-rank seeding, workers, pinned memory."""
from __future__ import annotations

import random
from typing import Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from core import dist


def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed python, numpy and torch with ``seed + rank`` (per-rank seeding, as the originals do)."""
    s = int(seed) + int(rank)
    random.seed(s)
    np.random.seed(s % (2 ** 32))
    torch.manual_seed(s)


def _worker_init(worker_id: int) -> None:
    # torch gives every worker base_seed + worker_id (base_seed drawn from the main RNG, so it differs
    # per rank and per epoch); make numpy and random follow it.
    s = torch.initial_seed() % (2 ** 32)
    np.random.seed(s)
    random.seed(s)


def build_loader(dataset, batch_size: int, *, shuffle: bool = True, drop_last: bool = True,
                 num_workers: int = 0, pin_memory: Optional[bool] = None, seed: int = 0,
                 sampler=None, collate_fn=None, exact_eval: bool = False) -> DataLoader:
    """A DataLoader that shards the dataset over ranks when a process group is up.

    ``batch_size`` is per process. With several ranks a :class:`DistributedSampler` (seeded by ``seed``) is
    used; call ``loader.sampler.set_epoch(epoch)`` every epoch (the engine does). ``exact_eval=True`` (for a
    validation loader whose consumer reduces sums and counts once after the loop, like
    :func:`core.eval.linear.validate`) uses :class:`UnpaddedDistributedSampler` instead, so every image is
    counted exactly once over the ranks; ranks may then run different numbers of batches, so do not use it
    where a collective runs per batch.

    Workers are not persistent: each epoch's workers draw their seeds from the main process RNG, which the
    engine's checkpoints restore, so a resumed run with workers continues exactly.
    """
    if sampler is None and dist.is_dist() and dist.get_world_size() > 1:
        if exact_eval:
            sampler = UnpaddedDistributedSampler(dataset)
        else:
            sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=False)
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    return DataLoader(dataset, batch_size=batch_size, shuffle=(shuffle and sampler is None), sampler=sampler,
                      num_workers=num_workers, pin_memory=pin_memory, drop_last=drop_last,
                      worker_init_fn=_worker_init if num_workers > 0 else None,
                      collate_fn=collate_fn)


class UnpaddedDistributedSampler(torch.utils.data.Sampler):
    """Rank r of W takes indices r, r + W, r + 2W, ... of the dataset in order: no padding, no duplicates
    (ranks may get one sample more or less than each other)."""

    def __init__(self, dataset, num_replicas: Optional[int] = None, rank: Optional[int] = None):
        self.n = len(dataset)
        self.num_replicas = num_replicas if num_replicas is not None else dist.get_world_size()
        self.rank = rank if rank is not None else dist.get_rank()

    def __iter__(self):
        return iter(range(self.rank, self.n, self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.num_replicas))

    def set_epoch(self, epoch: int) -> None:  # same order every epoch
        pass


def set_loader_epoch(loader, epoch: int) -> None:
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
