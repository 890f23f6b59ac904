"""Clustering metrics (TWIST ``evaluate_cluster``): NMI, AMI, ARI, FMI with sklearn defaults, and
Hungarian-matched accuracy (top-1 and top-5) from the count matrix of predicted cluster vs class."""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn import metrics


def hungarian_match(pred: np.ndarray, labels: np.ndarray, num_clusters: Optional[int] = None,
                    num_classes: Optional[int] = None) -> np.ndarray:
    """``match[c]`` = class matched to cluster c, maximising total agreement (``linear_sum_assignment`` on
    ``N - counts``). Unmatched clusters (more clusters than classes) map to -1."""
    K = num_clusters or int(pred.max()) + 1
    C = num_classes or int(labels.max()) + 1
    counts = np.zeros((K, C), dtype=np.int64)
    np.add.at(counts, (pred, labels), 1)
    rows, cols = linear_sum_assignment(len(pred) - counts)
    match = np.full(K, -1, dtype=np.int64)
    match[rows] = cols
    return match


def cluster_metrics(pred: np.ndarray, labels: np.ndarray, topk_pred: Optional[np.ndarray] = None,
                    num_clusters: Optional[int] = None) -> Dict[str, object]:
    """All metrics for predicted clusters ``pred`` (N,) against ``labels`` (N,). ``topk_pred`` (N x 5) are the
    top-5 clusters per sample for top-5 ACC. Returns floats (in %) and the ``match`` array."""
    pred, labels = np.asarray(pred).astype(np.int64), np.asarray(labels).astype(np.int64)
    match = hungarian_match(pred, labels, num_clusters)
    out: Dict[str, object] = {
        "nmi": 100 * metrics.normalized_mutual_info_score(labels, pred),
        "ami": 100 * metrics.adjusted_mutual_info_score(labels, pred),
        "ari": 100 * metrics.adjusted_rand_score(labels, pred),
        "fmi": 100 * metrics.fowlkes_mallows_score(labels, pred),
        "acc": 100 * float((match[pred] == labels).mean()),
        "match": match,
    }
    if topk_pred is not None:
        mapped = match[np.asarray(topk_pred).astype(np.int64)]
        out["acc_top5"] = 100 * float((mapped == labels[:, None]).any(1).mean())
    return out
