"""SimSiam / BYOL models of both faces, with the RDM predictor or the learned MLP predictor.

ImageNet face (``imagenet/simsiam/builder.py``, spec §3b): :class:`SimSiam` and the engine wrapper
:class:`ImageNetSimSiam`. solo-learn face (``solo/methods/{simsiam,byol,rdmsimsiam,rdmbyol}.py`` and
``base.py``, spec §2a, §4c): :class:`SoloSimSiam` and :class:`SoloBYOL`.

Every ``forward(batch)`` returns ``(loss, logs)`` for :func:`core.engine.train` and stores the detached
online / target outputs of its first loss term in ``self.last_outputs`` for the rank diagnostics.
"""
from __future__ import annotations

import copy
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from core.backbones import build_backbone, resnet_tiny
from core.errors import UserError
from rdm_lib.losses import BASE_LOSSES, imagenet_cos_term, rdm_solo_filtered

# ----------------------------------------------------------------------------------------------- ImageNet
TORCHVISION_ARCHS = sorted(n for n in torchvision.models.__dict__ if n.islower() and not n.startswith("__")
                           and callable(torchvision.models.__dict__[n]))
ARCHS = TORCHVISION_ARCHS + ["resnet_tiny"]


def imagenet_encoder(arch: str, num_classes: int = 1000, zero_init_residual: bool = False) -> nn.Module:
    """``torchvision.models.__dict__[arch](num_classes=..., zero_init_residual=...)``; ``resnet_tiny``
    (core's CPU-sized ResNet, ImageNet stem) gets an ``fc`` the same way, for tests and demos."""
    if arch == "resnet_tiny":
        m = resnet_tiny(cifar_stem=False, zero_init_residual=zero_init_residual)
        m.fc = nn.Linear(m.feat_dim, num_classes)
        return m
    if arch not in TORCHVISION_ARCHS:
        raise UserError(f"unknown architecture '{arch}' (a torchvision model name or resnet_tiny)")
    kwargs = dict(num_classes=num_classes)
    if zero_init_residual:
        kwargs["zero_init_residual"] = True
    return torchvision.models.__dict__[arch](**kwargs)


class SimSiam(nn.Module):
    """``simsiam/builder.py``: encoder with a 3-layer projector in place of ``fc`` (last bias frozen, output
    BN without affine) and a 2-layer bottleneck predictor, or ``Identity`` for any RDM ``pred_type``."""

    def __init__(self, arch: str = "resnet50", dim: int = 2048, pred_dim: int = 512, pred_type: str = "mlp"):
        super().__init__()
        self.encoder = imagenet_encoder(arch, num_classes=dim, zero_init_residual=True)
        prev_dim = self.encoder.fc.weight.shape[1]
        self.encoder.fc = nn.Sequential(
            nn.Linear(prev_dim, prev_dim, bias=False), nn.BatchNorm1d(prev_dim), nn.ReLU(inplace=True),
            nn.Linear(prev_dim, prev_dim, bias=False), nn.BatchNorm1d(prev_dim), nn.ReLU(inplace=True),
            self.encoder.fc, nn.BatchNorm1d(dim, affine=False))
        self.encoder.fc[6].bias.requires_grad = False  # hack from the original: no bias as followed by BN
        if pred_type == "mlp":
            self.predictor = nn.Sequential(nn.Linear(dim, pred_dim, bias=False), nn.BatchNorm1d(pred_dim),
                                           nn.ReLU(inplace=True), nn.Linear(pred_dim, dim))
        else:
            self.predictor = nn.Identity()

    def forward(self, x1, x2):
        z1, z2 = self.encoder(x1), self.encoder(x2)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        return p1, p2, z1.detach(), z2.detach()


class ImageNetSimSiam(SimSiam):
    """:class:`SimSiam` whose ``forward(batch)`` returns the loss of ``main_simsiam.py``:
    ``-(loss_function(p1, z2) + loss_function(p2, z1)) * 0.5`` (state-dict keys stay ``encoder.*`` /
    ``predictor.*``)."""

    def __init__(self, arch="resnet50", dim=2048, pred_dim=512, pred_type="mlp", pred_location="online",
                 sigma=0.0, guard=False):
        super().__init__(arch, dim, pred_dim, pred_type)
        self.pred_type, self.pred_location, self.sigma, self.guard = pred_type, pred_location, sigma, guard
        self.last_outputs: Optional[Tuple[torch.Tensor, torch.Tensor]] = None

    def forward(self, batch):
        (x1, x2), _ = batch
        p1, p2, z1, z2 = super().forward(x1, x2)
        c1, po, zt = imagenet_cos_term(p1, z2, self.pred_type, self.pred_location, self.sigma, self.guard, True)
        c2 = imagenet_cos_term(p2, z1, self.pred_type, self.pred_location, self.sigma, self.guard)
        self.last_outputs = (po.detach(), zt.detach())
        loss = -(c1 + c2) * 0.5
        return loss, {"loss": loss.detach()}


# ------------------------------------------------------------------------------------------- solo-learn
def solo_backbone(name: str, cifar: bool, zero_init_residual: bool = False) -> nn.Module:
    """solo ``BaseMethod`` backbone: ``fc = Identity``; on CIFAR the core's solo-learn stem
    (``Conv2d(3, C, 3, stride 1, padding 2, bias False)`` with torch's default init, ``maxpool = Identity``)."""
    return build_backbone(name, cifar_stem=cifar, zero_init_residual=zero_init_residual)


def topk_correct(logits: torch.Tensor, y: torch.Tensor, ks=(1, 5)) -> List[torch.Tensor]:
    k = min(max(ks), logits.shape[1])
    pred = logits.topk(k, 1).indices.eq(y[:, None])
    return [pred[:, :min(kk, k)].any(1).float().mean() * 100 for kk in ks]


class SoloBase(nn.Module):
    """solo ``BaseMethod``: backbone + online linear classifier on detached features (CE averaged over the
    large crops, ``ignore_index=-1``)."""

    def __init__(self, backbone: str, num_classes: int, cifar: bool, zero_init_residual: bool):
        super().__init__()
        self.backbone = solo_backbone(backbone, cifar, zero_init_residual)
        self.features_dim = self.backbone.feat_dim
        self.classifier = nn.Linear(self.features_dim, num_classes)
        self.last_outputs: Optional[Tuple[torch.Tensor, torch.Tensor]] = None

    def base_step(self, x, y):
        feats = self.backbone(x)
        logits = self.classifier(feats.detach())
        ce = F.cross_entropy(logits, y, ignore_index=-1)
        acc1, acc5 = topk_correct(logits.detach(), y)
        return feats, ce, acc1, acc5

    def param_groups(self, lr: float, classifier_lr: float, wd: float) -> List[Dict]:
        """Groups in solo's order: backbone, classifier (wd 0), then the method's own (``extra_groups``)."""
        groups = [dict(name="backbone", params=list(self.backbone.parameters()), lr=lr, weight_decay=wd),
                  dict(name="classifier", params=list(self.classifier.parameters()), lr=classifier_lr,
                       weight_decay=0.0)]
        groups += self.extra_groups(lr, classifier_lr, wd)
        for g in groups:
            g["params"] = [p for p in g["params"] if p.requires_grad]
            g["base_lr"] = g["lr"]
        return [g for g in groups if g["params"]]

    def extra_groups(self, lr, classifier_lr, wd) -> List[Dict]:
        return []

    @torch.no_grad()
    def evaluate_step(self, x, y):
        """Validation of the online classifier (``val_loss``, ``val_acc1``, ``val_acc5`` sums)."""
        logits = self.classifier(self.backbone(x))
        a1, a5 = topk_correct(logits, y)
        n = y.shape[0]
        return F.cross_entropy(logits, y, reduction="sum"), a1 * n / 100, a5 * n / 100, n


def _rdm_or_base(p, z, base, rdm: Optional[dict]):
    """One loss term and its (online, target) outputs: RDM filter on the gathered batch, or the plain loss."""
    if rdm is not None:
        p2, z2 = rdm_solo_filtered(p, z, rdm["pred_type"], rdm["pred_location"], rdm["sigma"], rdm["guard"])
        return BASE_LOSSES[base](p2, z2), p2, z2
    return BASE_LOSSES[base](p, z), p, z


class SoloSimSiam(SoloBase):
    """solo ``SimSiam`` (learned predictor, ``static_lr``) or ``RDMSimSiam`` (``rdm`` dict, no predictor).

    Projector: Linear(F, H, no bias)-BN-ReLU-Linear(H, H, no bias)-BN-ReLU-Linear(H, D) (bias frozen)-BN(D,
    affine=False). Loss ``L(z1 -> z2)/2 + L(z2 -> z1)/2`` + classifier CE, ``L`` = -cos."""

    def __init__(self, backbone="resnet18", num_classes=10, cifar=True, zero_init_residual=False,
                 proj_hidden_dim=2048, proj_output_dim=128, pred_hidden_dim=512, rdm: Optional[dict] = None):
        super().__init__(backbone, num_classes, cifar, zero_init_residual)
        F_, H, D = self.features_dim, proj_hidden_dim, proj_output_dim
        self.projector = nn.Sequential(
            nn.Linear(F_, H, bias=False), nn.BatchNorm1d(H), nn.ReLU(),
            nn.Linear(H, H, bias=False), nn.BatchNorm1d(H), nn.ReLU(),
            nn.Linear(H, D), nn.BatchNorm1d(D, affine=False))
        self.projector[6].bias.requires_grad = False
        self.rdm = rdm
        if rdm is None:
            self.predictor = nn.Sequential(nn.Linear(D, pred_hidden_dim, bias=False),
                                           nn.BatchNorm1d(pred_hidden_dim), nn.ReLU(),
                                           nn.Linear(pred_hidden_dim, D))

    def extra_groups(self, lr, classifier_lr, wd):
        groups = [dict(name="projector", params=list(self.projector.parameters()), lr=lr, weight_decay=wd)]
        if self.rdm is None:
            groups.append(dict(name="predictor", params=list(self.predictor.parameters()), lr=lr,
                               weight_decay=wd, static_lr=True))
        return groups

    def forward(self, batch):
        (x1, x2), y = batch
        f1, ce1, a1_1, a5_1 = self.base_step(x1, y)
        f2, ce2, a1_2, a5_2 = self.base_step(x2, y)
        z1, z2 = self.projector(f1), self.projector(f2)
        if self.rdm is None:
            p1, p2 = self.predictor(z1), self.predictor(z2)
        else:
            p1, p2 = z1, z2
        l1, po, zt = _rdm_or_base(p1, z2, "simsiam", self.rdm)
        l2, _, _ = _rdm_or_base(p2, z1, "simsiam", self.rdm)
        neg_cos_sim = l1 / 2 + l2 / 2
        class_loss = (ce1 + ce2) / 2
        self.last_outputs = (po.detach(), zt.detach())
        with torch.no_grad():
            z_std = F.normalize(torch.stack((z1, z2)), dim=-1).std(dim=1).mean()
        logs = {"neg_cos_sim": neg_cos_sim.detach(), "z_std": z_std, "class_loss": class_loss.detach(),
                "acc1": (a1_1 + a1_2) / 2, "acc5": (a5_1 + a5_2) / 2}
        return neg_cos_sim + class_loss, logs


class SoloBYOL(SoloBase):
    """solo ``BYOL`` (learned predictor) or ``RDMBYOL`` (``rdm`` dict, predictor removed).

    Projector Linear(F, H)-BN-ReLU-Linear(H, D); an EMA copy of backbone and projector (``momentum_*``,
    updated by :meth:`ema_update`); loss ``sum_{v1} sum_{v2 != v1} L(p[v2], z_m[v1])`` with
    ``L = 2 - 2 cos``, + classifier CE + momentum-classifier CE (``momentum_classifier``)."""

    def __init__(self, backbone="resnet18", num_classes=10, cifar=True, zero_init_residual=False,
                 proj_hidden_dim=2048, proj_output_dim=256, pred_hidden_dim=512, rdm: Optional[dict] = None,
                 momentum_classifier: bool = False):
        super().__init__(backbone, num_classes, cifar, zero_init_residual)
        F_, H, D = self.features_dim, proj_hidden_dim, proj_output_dim
        self.projector = nn.Sequential(nn.Linear(F_, H), nn.BatchNorm1d(H), nn.ReLU(), nn.Linear(H, D))
        self.momentum_backbone = copy.deepcopy(self.backbone)
        self.momentum_projector = copy.deepcopy(self.projector)
        for p in list(self.momentum_backbone.parameters()) + list(self.momentum_projector.parameters()):
            p.requires_grad = False
        self.rdm = rdm
        if rdm is None:
            self.predictor = nn.Sequential(nn.Linear(D, pred_hidden_dim), nn.BatchNorm1d(pred_hidden_dim),
                                           nn.ReLU(), nn.Linear(pred_hidden_dim, D))
        self.momentum_classifier = nn.Linear(self.features_dim, num_classes) if momentum_classifier else None

    def extra_groups(self, lr, classifier_lr, wd):
        groups = [dict(name="projector", params=list(self.projector.parameters()), lr=lr, weight_decay=wd)]
        if self.rdm is None:
            groups.append(dict(name="predictor", params=list(self.predictor.parameters()), lr=lr,
                               weight_decay=wd))
        if self.momentum_classifier is not None:
            groups.append(dict(name="momentum_classifier", params=list(self.momentum_classifier.parameters()),
                               lr=classifier_lr, weight_decay=0.0))
        return groups

    @property
    def momentum_pairs(self):
        return [(self.backbone, self.momentum_backbone), (self.projector, self.momentum_projector)]

    @torch.no_grad()
    def ema_update(self, tau: float) -> None:
        """solo ``MomentumUpdater.update``: ``theta_m <- tau theta_m + (1 - tau) theta`` (parameters only)."""
        for online, momentum in self.momentum_pairs:
            for po, pm in zip(online.parameters(), momentum.parameters()):
                pm.data.mul_(tau).add_(po.data, alpha=1 - tau)

    def forward(self, batch):
        views, y = batch
        feats, ces, a1s, a5s = zip(*[self.base_step(x, y) for x in views])
        Z = [self.projector(f) for f in feats]
        P = [self.predictor(z) for z in Z] if self.rdm is None else Z
        with torch.no_grad():
            feats_m = [self.momentum_backbone(x) for x in views]
            Z_m = [self.momentum_projector(f) for f in feats_m]
        neg_cos_sim, first = 0.0, None
        n = len(views)
        for v1 in range(n):
            for v2 in [v for v in range(n) if v != v1]:
                term, po, zt = _rdm_or_base(P[v2], Z_m[v1], "byol", self.rdm)
                neg_cos_sim = neg_cos_sim + term
                first = first or (po.detach(), zt.detach())
        self.last_outputs = first
        class_loss = sum(ces) / n
        logs = {"neg_cos_sim": neg_cos_sim.detach(), "class_loss": class_loss.detach(),
                "acc1": sum(a1s) / n, "acc5": sum(a5s) / n}
        loss = neg_cos_sim + class_loss
        if self.momentum_classifier is not None:
            m_logits = [self.momentum_classifier(f.detach()) for f in feats_m]
            m_ce = sum(F.cross_entropy(lg, y, ignore_index=-1) for lg in m_logits) / n
            loss = loss + m_ce
            logs["momentum_class_loss"] = m_ce.detach()
        with torch.no_grad():
            logs["z_std"] = F.normalize(torch.stack(Z), dim=-1).std(dim=1).mean()
        return loss, logs


METHODS = ("simsiam", "byol", "rdmsimsiam", "rdmbyol")


def build_solo_method(method: str, *, backbone: str, num_classes: int, cifar: bool, zero_init_residual: bool,
                      proj_hidden_dim: int, proj_output_dim: int, pred_hidden_dim: int, pred_type: str,
                      pred_location: str, sigma: float, guard: bool, momentum_classifier: bool) -> SoloBase:
    rdm = dict(pred_type=pred_type, pred_location=pred_location, sigma=sigma, guard=guard) \
        if method.startswith("rdm") else None
    common = dict(backbone=backbone, num_classes=num_classes, cifar=cifar, zero_init_residual=zero_init_residual,
                  proj_hidden_dim=proj_hidden_dim, proj_output_dim=proj_output_dim,
                  pred_hidden_dim=pred_hidden_dim, rdm=rdm)
    if method in ("simsiam", "rdmsimsiam"):
        return SoloSimSiam(**common)
    if method in ("byol", "rdmbyol"):
        return SoloBYOL(momentum_classifier=momentum_classifier, **common)
    raise UserError(f"unknown method '{method}' (choose one of {', '.join(METHODS)})")
