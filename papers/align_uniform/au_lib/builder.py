"""The MoCo model of SsnL/moco_align_uniform (``moco/builder.py``): query/key encoders, queue, momentum update,
shuffle-BN and the contrastive / alignment / uniformity terms of :mod:`au_lib.losses`."""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from core import dist as cdist
from au_lib.losses import MoCoLosses, align_term, contrastive_term, positive_sims, queue_sims, uniform_term


def add_mlp_head(encoder: nn.Module) -> None:
    """``--mlp`` (MoCo v2): ``fc`` -> Sequential(Linear(d, d), ReLU, fc) with d the input width of fc; no BN."""
    fc = encoder.fc
    d = fc.weight.shape[1]
    encoder.fc = nn.Sequential(nn.Linear(d, d), nn.ReLU(), fc)


class MoCo(nn.Module):
    """MoCo with optional contrastive, alignment and uniformity terms.

    ``base_encoder(num_classes=dim)`` builds each encoder (its ``fc`` is the projection). A ``None``
    ``contr_tau`` / ``align_alpha`` / ``unif_t`` means "do not compute this term" (a zero CLI weight).
    The combination weights are kept on the module so that ``forward(batch)`` returns the engine's
    ``(loss, logs)``; :meth:`compute_losses` is the original ``forward(im_q, im_k)``.
    """

    def __init__(self, base_encoder: Callable[..., nn.Module], dim: int = 128, K: int = 65536, m: float = 0.999,
                 contr_tau: Optional[float] = 0.07, align_alpha: Optional[float] = None,
                 unif_t: Optional[float] = None, unif_intra_batch: bool = True, mlp: bool = False,
                 contr_w: float = 0.0, align_w: float = 3.0, unif_w: float = 1.0):
        super().__init__()
        self.K, self.m = K, m
        self.contr_tau, self.align_alpha, self.unif_t = contr_tau, align_alpha, unif_t
        self.unif_intra_batch = unif_intra_batch
        self.weights = (contr_w, align_w, unif_w)
        self.encoder_q = base_encoder(num_classes=dim)
        self.encoder_k = base_encoder(num_classes=dim)
        if mlp:
            add_mlp_head(self.encoder_q)
            add_mlp_head(self.encoder_k)
        for p_q, p_k in zip(self.encoder_q.parameters(), self.encoder_k.parameters()):
            p_k.data.copy_(p_q.data)  # parameters only; BN buffers are not copied (as the original)
            p_k.requires_grad = False
        if contr_tau is not None:
            self.register_buffer("scalar_label", torch.zeros((), dtype=torch.long))
        else:
            self.register_parameter("scalar_label", None)
        self.register_buffer("queue", F.normalize(torch.randn(dim, K), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
        self.last_qk = None  # (q, k) of the last step, detached, for the diagnostics

    @torch.no_grad()
    def _momentum_update_key_encoder(self) -> None:
        """theta_k <- m theta_k + (1 - m) theta_q, parameters only."""
        for p_q, p_k in zip(self.encoder_q.parameters(), self.encoder_k.parameters()):
            p_k.data.mul_(self.m).add_(p_q.data, alpha=1.0 - self.m)

    @torch.no_grad()
    def _dequeue_and_enqueue(self, keys: torch.Tensor) -> None:
        """Gather the keys of all ranks and write them (transposed) at ``queue_ptr``; FIFO overwrite.
        The columns ``ptr .. ptr + batch - 1`` are indexed on the device (K is a multiple of the batch, so they
        never wrap), the same writes as the original's slice without reading the pointer back to the host."""
        keys = cdist.concat_all_gather(keys)
        batch_size = keys.shape[0]
        if self.K % batch_size != 0:
            raise RuntimeError(f"queue size K={self.K} is not a multiple of the global batch {batch_size}")
        cols = self.queue_ptr + torch.arange(batch_size, device=self.queue_ptr.device)
        self.queue.index_copy_(1, cols, keys.T.to(self.queue.dtype))
        self.queue_ptr.copy_((self.queue_ptr + batch_size) % self.K)

    def compute_losses(self, im_q: torch.Tensor, im_k: torch.Tensor) -> MoCoLosses:
        """Original ``MoCo.forward``: q, then (no grad) momentum update -> shuffle -> k -> unshuffle, the active
        loss terms on the cached q.k and q.queue, and the enqueue of this step's keys last."""
        q = F.normalize(self.encoder_q(im_q), dim=1)
        with torch.no_grad():
            self._momentum_update_key_encoder()
            im_k, idx_unshuffle = cdist.batch_shuffle(im_k)
            k = F.normalize(self.encoder_k(im_k), dim=1)
            k = cdist.batch_unshuffle(k, idx_unshuffle)

        qk = positive_sims(q, k) if (self.contr_tau is not None or self.align_alpha is not None) else None
        qqueue = queue_sims(q, self.queue.clone()) if (self.contr_tau is not None or self.unif_t is not None) \
            else None
        loss_contr = logits = loss_align = loss_unif = None
        if self.contr_tau is not None:
            loss_contr, logits = contrastive_term(qk, qqueue, self.contr_tau)
        if self.align_alpha is not None:
            loss_align = align_term(q, k, self.align_alpha, qk=qk)
        if self.unif_t is not None:
            loss_unif = uniform_term(q, self.queue, self.unif_t, self.unif_intra_batch, qqueue=qqueue)
        self.last_qk = (q.detach(), k.detach())
        self._dequeue_and_enqueue(k)
        return MoCoLosses(loss_contr, logits, loss_align, loss_unif)

    def forward(self, batch):
        """Engine step: ``batch = ([im_q, im_k], target)`` -> ``(weighted loss, logs)``."""
        images = batch[0] if isinstance(batch, (list, tuple)) and isinstance(batch[0], (list, tuple)) else batch
        losses = self.compute_losses(images[0], images[1])
        loss = losses.combine(*self.weights)
        logs = {}
        if losses.loss_contr is not None:
            logs["loss_contr"] = losses.loss_contr.detach()
            acc1, acc5 = topk_acc(losses.logits_contr.detach(), (1, 5))
            logs["contr_acc1"], logs["contr_acc5"] = acc1, acc5
        if losses.loss_align is not None:
            logs["loss_align"] = losses.loss_align.detach()
        if losses.loss_unif is not None:
            logs["loss_unif"] = losses.loss_unif.detach()
        return loss, logs


@torch.no_grad()
def topk_acc(logits: torch.Tensor, ks=(1,)):
    """Percentage of rows whose column 0 (the positive) is among the top-k logits."""
    maxk = min(max(ks), logits.shape[1])
    top = logits.topk(maxk, dim=1).indices
    hit = top.eq(0)
    return [hit[:, :min(k, maxk)].any(dim=1).float().mean() * 100 for k in ks]
