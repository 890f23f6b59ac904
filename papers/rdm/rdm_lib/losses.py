"""RDM losses as pure functions of tensors.

solo-learn face (``solo/losses/simsiam.py``, ``byol.py``; spec §2a, §2d)::

    simsiam_loss(p, z) = -mean_i cos(p_i, sg(z_i))         byol_loss(p, z) = 2 - 2 mean_i cos(p_i, sg(z_i))

    rdm_solo_loss(p, z): p, z <- all_gather(p), all_gather(z)   (global batch, gradient kept on p)
                         p, z <- spectral filter (rdm_lib.predictor.apply_solo)
                         base loss of (p, z)

ImageNet face (``imagenet/main_simsiam.py`` ``loss_function``; spec §2b)::

    cos_term(p, z) = mean_i cos(p_i, z_i)   (mlp: no gather; RDM types: gathered + filtered)
    loss = -(cos_term(p1, z2) + cos_term(p2, z1)) * 0.5
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from core import dist
from core.losses import byol_mse, neg_cosine
from rdm_lib.predictor import apply_imagenet, apply_solo

BASE_LOSSES = {"simsiam": neg_cosine, "byol": byol_mse}


def simsiam_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """solo ``simsiam_loss_func``: ``-mean cos(p, stopgrad(z))``."""
    return neg_cosine(p, z)


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """solo ``byol_loss_func``: ``2 - 2 mean cos(p, stopgrad(z))``."""
    return byol_mse(p, z)


def rdm_solo_filtered(p: torch.Tensor, z: torch.Tensor, pred_type: str, pred_location: str, sigma: float,
                      guard: bool = False):
    """Gather p and z over ranks (backward sums, so DDP's mean gives the global-batch gradient), then apply
    the solo-learn spectral filter. Returns the filtered ``(p', z')`` on the global batch."""
    z, p = dist.all_gather_grad(z), dist.all_gather_grad(p)
    return apply_solo(p, z, pred_type, pred_location, sigma, guard)


def rdm_solo_loss(p: torch.Tensor, z: torch.Tensor, pred_type: str, pred_location: str, sigma: float,
                  base: str = "simsiam", guard: bool = False) -> torch.Tensor:
    """``RDMSimSiam.loss`` / ``RDMBYOL.loss`` (``base`` = simsiam or byol)."""
    p2, z2 = rdm_solo_filtered(p, z, pred_type, pred_location, sigma, guard)
    return BASE_LOSSES[base](p2, z2)


def imagenet_cos_term(p: torch.Tensor, z: torch.Tensor, pred_type: str = "mlp", pred_location: str = "online",
                      sigma: float = 0.0, guard: bool = False, return_outputs: bool = False):
    """``loss_function(p, z)`` of the ImageNet script: the *positive* mean cosine similarity."""
    if pred_type != "mlp":
        z, p = dist.all_gather_grad(z), dist.all_gather_grad(p)
        p, z = apply_imagenet(p, z, pred_type, pred_location, sigma, guard)
    cos = F.cosine_similarity(p, z.detach(), dim=1).mean()
    return (cos, p, z) if return_outputs else cos


def imagenet_simsiam_loss(p1, p2, z1, z2, pred_type: str = "mlp", pred_location: str = "online",
                          sigma: float = 0.0, guard: bool = False) -> torch.Tensor:
    """``-(loss_function(p1, z2) + loss_function(p2, z1)) * 0.5``."""
    return -(imagenet_cos_term(p1, z2, pred_type, pred_location, sigma, guard)
             + imagenet_cos_term(p2, z1, pred_type, pred_location, sigma, guard)) * 0.5
