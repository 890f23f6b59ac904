"""SiameseNet (original ``project/model.py``) and the per-step computation of every method and form.

``forward(batch) -> (loss, logs)`` for :func:`core.engine.train`. The online branch is encoder + 3-layer
projector; the momentum branch (when the form has one) is a deep copy updated in ``forward`` before the
targets are computed, as the original. Features are L2-normalised before every gradient form.
"""
from __future__ import annotations

import copy
from typing import Dict, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as Fn

from core import dist
from core.losses import align_loss, uniform_loss
from core.errors import UserError
from unigrad_lib import grads
from unigrad_lib.config import uses_momentum_encoder


def build_backbone(name: str, **kw) -> nn.Module:
    """core.backbones.build_backbone, imported on first use (timm makes that import slow)."""
    from core.backbones import build_backbone as build
    return build(name, **kw)


def _f32(x: torch.Tensor) -> torch.Tensor:
    """At least fp32: the gradient forms run in fp32 also under fp16/bf16 autocast."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def projection_mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """``_projection_mlp``: Linear(no bias)-BN-ReLU, Linear(no bias)-BN-ReLU, Linear(bias)."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, out_dim))


def prediction_mlp(dim: int, hidden_dim: int) -> nn.Sequential:
    """Predictor of the original SimSiam (2048-512-2048) / BYOL (2048-4096-2048) losses."""
    return nn.Sequential(nn.Linear(dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim),
                         nn.ReLU(inplace=True), nn.Linear(hidden_dim, dim))


def cutmix(x: torch.Tensor, perm: torch.Tensor, alpha: float):
    """Paste a box of ``x[perm]`` into ``x`` (CutMix, Yun et al. 2019); returns the mixed batch and the kept
    area ratio ``a`` (a 0-d tensor). The box has area ~ (1 - lam) h w with lam ~ Beta(alpha, alpha)
    (0.5 for alpha = 0), side ``int(h sqrt(1 - lam))``, centre uniform, clipped to the image. Everything is
    drawn and computed on ``x``'s device (its RNG, restored on resume): no host read per step."""
    h, w = x.shape[2], x.shape[3]
    dev = x.device
    if alpha > 0:
        a_t = torch.full((), float(alpha), device=dev)  # a fill, not a host-to-device copy
        lam = torch.distributions.Beta(a_t, a_t, validate_args=False).sample()
    else:
        lam = torch.full((), 0.5, device=dev)
    cut = (1.0 - lam).sqrt()
    ch, cw = torch.floor(h * cut).long(), torch.floor(w * cut).long()
    cy = torch.randint(h, (), device=dev)
    cx = torch.randint(w, (), device=dev)
    y0, y1 = (cy - ch // 2).clamp(min=0), (cy + ch // 2).clamp(max=h)
    x0, x1 = (cx - cw // 2).clamp(min=0), (cx + cw // 2).clamp(max=w)
    ys, xs = torch.arange(h, device=dev), torch.arange(w, device=dev)
    box = ((ys >= y0) & (ys < y1))[:, None] & ((xs >= x0) & (xs < x1))[None, :]  # rows y0..y1-1, cols x0..x1-1
    out = torch.where(box, x[perm], x)
    ftype = x.dtype if x.is_floating_point() else torch.float32
    a = 1.0 - box.sum().to(ftype) / float(h * w)
    return out, a


@torch.no_grad()
def effective_rank(z: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Roy & Vetterli effective rank ``exp(-sum p log p)``, ``p = s / ||s||_1`` over the singular values of the
    centred ``z`` (float64 on ``z``'s device; ``xlogy`` gives 0 for p = 0, as core's filter of p > 0)."""
    zd = z.detach().double()
    s = torch.linalg.svdvals(zd - zd.mean(0, keepdim=True))
    p = s / s.sum().clamp_min(eps)
    return torch.exp(-torch.special.xlogy(p, p).sum())


class SiameseNet(nn.Module):
    """Encoder + projector (+ momentum copy, + predictor for the original SimSiam/BYOL losses).

    State that belongs to the method lives in buffers so that it is checkpointed and restored on resume:
    ``F`` / ``F_count`` (UniGrad and DirectPred forms), ``queue`` / ``queue_ptr`` (MoCo forms).
    """

    def __init__(self, cfg):
        super().__init__()
        self.cfg = dict(cfg)
        self.method, self.form = cfg["method"], cfg["form"]
        self.encoder = build_backbone(cfg["arch"], zero_init_residual=bool(cfg.get("zero_init_residual", True)))
        feat = self.encoder.feat_dim
        pin = cfg.get("projector_input_dim")
        if pin is not None and pin != feat:
            raise UserError(f"projector_input_dim={pin} but backbone '{cfg['arch']}' outputs {feat} features")
        out_dim = cfg["projector_output_dim"]
        self.projector = projection_mlp(feat, cfg["projector_hidden_dim"], out_dim)
        self.use_mm = uses_momentum_encoder(self.method, self.form)
        if self.use_mm:
            self.momentum_encoder = copy.deepcopy(self.encoder)
            self.momentum_projector = copy.deepcopy(self.projector)
            for p in list(self.momentum_encoder.parameters()) + list(self.momentum_projector.parameters()):
                p.requires_grad = False
        if self.form == "loss" and self.method in ("simsiam", "byol"):
            self.predictor = prediction_mlp(out_dim, cfg["predictor_hidden_dim"])
        if self.method in ("unigrad", "simsiam", "byol") and self.form != "loss":
            self.register_buffer("F", torch.zeros(out_dim, out_dim))
            self.register_buffer("F_count", torch.zeros((), dtype=torch.long))
        if self.method == "moco":
            q = torch.randn(int(cfg["queue_size"]), out_dim)
            self.register_buffer("queue", nn.functional.normalize(q, dim=1))
            self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.mm = float(cfg["base_momentum"])  # set every step by the trainer (cosine schedule)
        self.diag_freq = int(cfg.get("diag_freq") or 0)
        self.steps = 0
        self._diag: Dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------------------------------ pieces
    @torch.no_grad()
    def momentum_update(self, mm: float) -> None:
        """theta_m <- mm theta_m + (1 - mm) theta_online (parameters only; BN buffers are not copied)."""
        for online, target in ((self.encoder, self.momentum_encoder), (self.projector, self.momentum_projector)):
            for po, pm in zip(online.parameters(), target.parameters()):
                pm.mul_(mm).add_(po.detach(), alpha=1.0 - mm)

    def online(self, x):
        return self.projector(self.encoder(x))

    @torch.no_grad()
    def target(self, x):
        return self.momentum_projector(self.momentum_encoder(x))

    @torch.no_grad()
    def update_F(self, m1: torch.Tensor, m2: torch.Tensor) -> torch.Tensor:
        """EMA of the all-reduced batch correlation of the targets of both views (kept in fp32)."""
        F_hat = grads.batch_correlation(m1, m2)
        ema = grads.ema_correlation(self.F, F_hat, float(self.cfg["rho"]))
        # F <- F_hat at the first step: selected on the device, no read of F_count
        self.F.copy_(torch.where(self.F_count > 0, ema, F_hat))
        self.F_count += 1
        return self.F

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Replace the oldest entries of the queue with ``keys`` (gathered over ranks, both views)."""
        keys = dist.concat_all_gather(keys.detach().to(self.queue.dtype))
        K, n = self.queue.shape[0], keys.shape[0]
        if n >= K:
            self.queue.copy_(keys[-K:])
            self.queue_ptr.zero_()
            return
        idx = (torch.arange(n, device=keys.device) + self.queue_ptr) % K  # pointer stays on the device
        self.queue.index_copy_(0, idx, keys)
        self.queue_ptr.copy_((self.queue_ptr + n) % K)

    # ------------------------------------------------------------------------------------------ forward
    def forward(self, batch) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        views = batch[0] if isinstance(batch, (list, tuple)) and isinstance(batch[0], (list, tuple)) else batch
        if not isinstance(views, (list, tuple)) or len(views) < 2:
            raise UserError("UniGrad expects two augmented views per sample")
        x1, x2 = views[0], views[1]
        self.steps += 1
        if self.form == "loss":
            loss, logs, u1, u2 = self._original_loss(x1, x2)
        else:
            loss, logs, u1, u2 = self._gradient_form(x1, x2)
        if self.diag_freq and (self.steps - 1) % self.diag_freq == 0:
            self._diag = self.diagnostics(u1, u2)
        logs.update(self._diag)  # the last computed values are logged every step (epoch means stay fair)
        if self.use_mm:
            logs["mm"] = float(self.mm)  # a host number: the engine logs it without a device copy
        return loss, logs

    @staticmethod
    @torch.no_grad()
    def diagnostics(u1: torch.Tensor, u2: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Collapse diagnostics of the normalised online embeddings of this rank's batch, the definitions of
        :mod:`core.eval.diagnostics` computed as device tensors (no host read in the training step)."""
        a, b = u1.detach().float(), u2.detach().float()
        both = torch.cat([a, b])
        na, nb, nboth = Fn.normalize(a, dim=1), Fn.normalize(b, dim=1), Fn.normalize(both, dim=1)
        return {"eff_rank": effective_rank(both), "align": align_loss(na, nb, 2), "uniform": uniform_loss(nboth, 2),
                "view_sim": Fn.cosine_similarity(a, b, dim=1).mean()}

    def _targets(self, x1, x2, z1, z2):
        if self.use_mm:
            self.momentum_update(self.mm)
            return self.target(x1), self.target(x2)
        return z1.detach(), z2.detach()

    def _gradient_form(self, x1, x2):
        c = self.cfg
        if c.get("cutmix"):
            return self._unigrad_cutmix(x1, x2)
        z1, z2 = self.online(x1), self.online(x2)
        t1, t2 = self._targets(x1, x2, z1, z2)
        u1, u2 = grads.normalize(z1), grads.normalize(z2)
        m1, m2 = grads.normalize(_f32(t1)), grads.normalize(_f32(t2))
        u1d, u2d = _f32(u1.detach()), _f32(u2.detach())
        with torch.autocast(u1.device.type, enabled=False):  # F and g in fp32 also under AMP
            g1, g2 = self._form_grads(u1d, u2d, m1, m2)
        loss = grads.symmetric_surrogate(g1, _f32(u1), g2, _f32(u2))
        pos_sim = 0.5 * ((u1d * m2).sum(1).mean() + (u2d * m1).sum(1).mean())
        return loss, {"pos_sim": pos_sim}, u1, u2

    @torch.no_grad()
    def _form_grads(self, u1d, u2d, m1, m2):
        """g1, g2 of the method's gradient form (grads.py) from detached online features and targets."""
        c = self.cfg
        if self.method == "unigrad":
            F = self.update_F(m1, m2)
            g1, g2 = grads.unigrad_grad(u1d, m2, F, c["lambd"]), grads.unigrad_grad(u2d, m1, F, c["lambd"])
        elif self.method in ("simsiam", "byol"):
            F = self.update_F(m1, m2)
            pred = grads.directpred_matrices(F, c["eps"])  # one SVD of F per step, shared by both views
            g1 = grads.directpred_grad(u1d, m2, F, c["eps"], matrices=pred)
            g2 = grads.directpred_grad(u2d, m1, F, c["eps"], matrices=pred)
        elif self.method == "simclr":
            keys = dist.concat_all_gather(torch.cat([m1, m2]))
            g1 = grads.contrastive_grad(u1d, m2, keys, c["moco_t"])
            g2 = grads.contrastive_grad(u2d, m1, keys, c["moco_t"])
        elif self.method == "moco":
            queue = self.queue.clone()
            g1 = grads.moco_grad(u1d, m2, queue, c["moco_t"])
            g2 = grads.moco_grad(u2d, m1, queue, c["moco_t"])
            self.enqueue(torch.cat([m1, m2]))
        elif self.method == "barlow_twins":
            U1, U2 = dist.concat_all_gather(u1d), dist.concat_all_gather(u2d)
            M1, M2 = dist.concat_all_gather(m1), dist.concat_all_gather(m2)
            n = M1.shape[0]
            g1 = grads.barlow_twins_grad(m2, M2, U1, c["lambd"], n)
            g2 = grads.barlow_twins_grad(m1, M1, U2, c["lambd"], n)
        elif self.method == "vicreg":
            U1, U2 = dist.concat_all_gather(u1d), dist.concat_all_gather(u2d)
            M1, M2 = dist.concat_all_gather(m1), dist.concat_all_gather(m2)
            n = M1.shape[0]
            g1 = grads.vicreg_grad(u1d, m2, U1.mean(0, keepdim=True), M1, c["lambd"], n)
            g2 = grads.vicreg_grad(u2d, m1, U2.mean(0, keepdim=True), M2, c["lambd"], n)
        else:  # pragma: no cover - config.check rejects it
            raise UserError(f"no gradient form for method '{self.method}'")
        return g1, g2

    def _unigrad_cutmix(self, x1, x2):
        """UniGrad + CutMix: online inputs are CutMix-ed with a permutation of the local batch; the positive
        target is the area-weighted mix a m_i + (1 - a) m_perm(i) of the clean targets; F uses clean targets."""
        c = self.cfg
        perm = torch.randperm(x1.shape[0], device=x1.device)
        x1m, a1 = cutmix(x1, perm, float(c.get("cutmix_alpha", 1.0)))
        x2m, a2 = cutmix(x2, perm, float(c.get("cutmix_alpha", 1.0)))
        z1, z2 = self.online(x1m), self.online(x2m)
        t1, t2 = self._targets(x1, x2, z1, z2)
        u1, u2 = grads.normalize(z1), grads.normalize(z2)
        m1, m2 = grads.normalize(_f32(t1)), grads.normalize(_f32(t2))
        pos1 = a1 * m2 + (1 - a1) * m2[perm]
        pos2 = a2 * m1 + (1 - a2) * m1[perm]
        u1d, u2d = _f32(u1.detach()), _f32(u2.detach())
        with torch.autocast(u1.device.type, enabled=False):  # F and g in fp32 also under AMP
            F = self.update_F(m1, m2)
            g1, g2 = grads.unigrad_grad(u1d, pos1, F, c["lambd"]), grads.unigrad_grad(u2d, pos2, F, c["lambd"])
        loss = grads.symmetric_surrogate(g1, _f32(u1), g2, _f32(u2))
        pos_sim = 0.5 * ((u1d * pos1).sum(1).mean() + (u2d * pos2).sum(1).mean())
        area = 0.5 * (a1 + a2)
        return loss, {"pos_sim": pos_sim, "cutmix_area": area}, u1, u2

    def _original_loss(self, x1, x2):
        """The methods' own losses on the same encoder/projector (core.losses)."""
        from core import losses as L
        c, m = self.cfg, self.method
        z1, z2 = self.online(x1), self.online(x2)
        logs: Dict[str, torch.Tensor] = {}
        if m == "simclr":
            loss = L.nt_xent(z1, z2, c["moco_t"])
        elif m == "moco":
            self.momentum_update(self.mm)
            k1, k2 = grads.normalize(self.target(x1)), grads.normalize(self.target(x2))
            q1, q2 = grads.normalize(z1), grads.normalize(z2)
            queue = self.queue.clone()
            loss = 0.5 * (L.info_nce(q1, k2, queue, c["moco_t"]) + L.info_nce(q2, k1, queue, c["moco_t"]))
            self.enqueue(torch.cat([k1, k2]))
        elif m == "simsiam":
            p1, p2 = self.predictor(z1), self.predictor(z2)
            loss = 0.5 * (L.neg_cosine(p1, z2.detach()) + L.neg_cosine(p2, z1.detach()))
        elif m == "byol":
            self.momentum_update(self.mm)
            t1, t2 = self.target(x1), self.target(x2)
            p1, p2 = self.predictor(z1), self.predictor(z2)
            loss = L.byol_mse(p1, t2) + L.byol_mse(p2, t1)
        elif m == "vicreg":
            loss = L.vicreg_loss(z1, z2, sim_coeff=c["sim_coeff"], std_coeff=c["std_coeff"],
                                 cov_coeff=c["cov_coeff"])
        elif m == "barlow_twins":
            loss = L.barlow_twins_loss(z1, z2, c["bt_lambd"])
        else:
            raise UserError(f"method '{m}' has no original loss form here")
        u1, u2 = grads.normalize(z1), grads.normalize(z2)
        return loss, logs, u1, u2


def checkpoint_entries(model: nn.Module) -> Dict[str, object]:
    """Top-level keys of the original checkpoint besides ``model``: ``F`` (None for forms without F)."""
    inner = dist.unwrap(model)
    F = getattr(inner, "F", None)
    return {"F": F.detach().cpu().clone() if F is not None and int(inner.F_count) > 0 else None}

