"""Feature extraction and the weighted kNN classifier (InstDisc / UniGrad monitor).

Prediction for a query with normalised feature q: take the k training features with the largest cosine
similarity s_i, weight each by ``exp(s_i / t)``, sum the weights per class, rank classes by the sum.
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import torch
import torch.nn.functional as F

from core import dist
from core.engine.trainer import to_device


@torch.no_grad()
def extract_features(model, loader, device, normalize: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """Run ``model`` in eval mode over ``loader``; return (features, labels), gathered over ranks
    (sampler padding makes the gathered set a little larger on several ranks; that is fine for kNN)."""
    was_training = model.training
    model.eval()
    feats, labels = [], []
    for x, y in loader:
        f = model(to_device(x, device))
        feats.append(F.normalize(f.float(), dim=1) if normalize else f.float())
        labels.append(y.to(device))
    model.train(was_training)
    f, y = torch.cat(feats), torch.cat(labels)
    return dist.concat_all_gather(f), dist.concat_all_gather(y)


@torch.no_grad()
def knn_scores(train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor, num_classes: int,
               k: int = 200, t: float = 0.1, chunk: int = 1024) -> torch.Tensor:
    """Weighted kNN class scores (N_test x C) for normalised features."""
    k = min(k, train_f.shape[0])
    out = []
    for i in range(0, test_f.shape[0], chunk):
        sim = test_f[i:i + chunk] @ train_f.t()
        w, idx = sim.topk(k, dim=1)
        w = (w / t).exp()
        onehot = F.one_hot(train_y[idx], num_classes).float()
        out.append((onehot * w.unsqueeze(-1)).sum(1))
    return torch.cat(out)


@torch.no_grad()
def knn_accuracy(train_f, train_y, test_f, test_y, num_classes: int, k: int = 200, t: float = 0.1,
                 topk: Sequence[int] = (1,)) -> Dict[str, float]:
    """Top-k accuracies (%) of the weighted kNN classifier."""
    scores = knn_scores(train_f, train_y, test_f, num_classes, k, t)
    ranked = scores.argsort(dim=1, descending=True)
    return {f"top{n}": float((ranked[:, :n] == test_y[:, None]).any(1).float().mean() * 100) for n in topk}


@torch.no_grad()
def knn_eval(model, train_loader, test_loader, device, num_classes: int, k: int = 200,
             t: float = 0.1) -> float:
    """kNN top-1 (%) of ``model``'s features: memory = ``train_loader``, queries = ``test_loader``."""
    tf, ty = extract_features(model, train_loader, device)
    qf, qy = extract_features(model, test_loader, device)
    return knn_accuracy(tf, ty, qf, qy, num_classes, k, t)["top1"]
