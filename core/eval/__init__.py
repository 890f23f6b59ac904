"""Evaluation: kNN, linear evaluation, clustering metrics, collapse diagnostics, weight loading."""
from core.eval.clustering import cluster_metrics, hungarian_match  # noqa: F401
from core.eval.diagnostics import (alignment, collapse_metrics, effective_rank, l2_std,  # noqa: F401
                                   positive_similarity, singular_values, uniformity)
from core.eval.knn import extract_features, knn_accuracy, knn_eval, knn_scores  # noqa: F401
from core.eval.linear import (LinearEvalConfig, accuracy, freeze_all_but, init_linear_head,  # noqa: F401
                              linear_probe_features, run_linear_eval, sanity_check, validate)
from core.eval.weights import (extract_backbone_state, load_backbone_weights,  # noqa: F401
                               unwrap_container)
