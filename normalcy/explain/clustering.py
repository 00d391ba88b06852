"""Clustering of region embeddings with K chosen from the data, and the scores that compare it to true types.

NMI and ARI come from scikit-learn; Hungarian cluster accuracy is computed here from the contingency table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from normalcy.errors import ParameterError

K_RANGE = (2, 10)


def contingency(truth: Sequence, pred: Sequence) -> np.ndarray:
    """Counts n_ij of items with true class i and cluster j (classes and clusters in sorted order)."""
    truth, pred = np.asarray(truth), np.asarray(pred)
    if truth.shape != pred.shape or truth.ndim != 1:
        raise ParameterError(f"labelings must be 1-D and of equal length, got {truth.shape} and {pred.shape}")
    _, ti = np.unique(truth, return_inverse=True)
    _, pi = np.unique(pred, return_inverse=True)
    table = np.zeros((ti.max(initial=-1) + 1, pi.max(initial=-1) + 1), dtype=np.int64)
    np.add.at(table, (ti, pi), 1)
    return table


def nmi(truth: Sequence, pred: Sequence) -> float:
    """Normalized mutual information (scikit-learn's, arithmetic normalization)."""
    from sklearn.metrics import normalized_mutual_info_score

    contingency(truth, pred)  # validates shapes with our error type
    return float(normalized_mutual_info_score(truth, pred)) if len(truth) else float("nan")


def ari(truth: Sequence, pred: Sequence) -> float:
    """Adjusted Rand index (scikit-learn's): pair agreement corrected for chance, 1 = identical partitions."""
    from sklearn.metrics import adjusted_rand_score

    contingency(truth, pred)
    return float(adjusted_rand_score(truth, pred))


def cluster_accuracy(truth: Sequence, pred: Sequence) -> float:
    """Fraction of items right after the best one-to-one matching of clusters to classes (Hungarian)."""
    from scipy.optimize import linear_sum_assignment

    table = contingency(truth, pred)
    if table.size == 0:
        return float("nan")
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / table.sum())


def cluster_metrics(truth: Sequence, pred: Sequence) -> dict[str, float]:
    """NMI, ARI and Hungarian accuracy of a clustering against true labels."""
    return {"nmi": nmi(truth, pred), "ari": ari(truth, pred), "accuracy": cluster_accuracy(truth, pred)}


@dataclass
class Clustering:
    """Cluster labels, the chosen K and the silhouette of every K tried (how K was chosen)."""

    labels: np.ndarray
    k: int
    silhouettes: dict[int, float] = field(default_factory=dict)


def prepare_embeddings(x: np.ndarray, dims: int = 32, seed: int = 0) -> np.ndarray:
    """L2-normalise rows (cluster by direction of deviation, not its size), PCA-whiten to <= `dims` dims."""
    x = np.asarray(x, dtype=np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    x = x - x.mean(0)
    dims = min(dims, x.shape[0] - 1, x.shape[1])
    if dims < 1:
        return x
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    z = u[:, :dims] * s[:dims]
    return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)


def cluster(x: np.ndarray, k: int | None = None, k_range: tuple[int, int] = K_RANGE) -> Clustering:
    """Ward agglomerative clustering; K given, or the K in `k_range` with the highest silhouette (cosine)."""
    from sklearn.cluster import AgglomerativeClustering
    from sklearn.metrics import silhouette_score

    n = len(x)
    if n < 2:
        return Clustering(np.zeros(n, dtype=np.int64), 1 if n else 0)
    if k is not None:
        if not 1 <= k <= n:
            raise ParameterError(f"k must be between 1 and the number of regions ({n}), got {k}")
        return Clustering(AgglomerativeClustering(n_clusters=k).fit_predict(x).astype(np.int64), k)
    lo, hi = max(2, k_range[0]), min(k_range[1], n - 1)
    if hi < lo:
        return Clustering(np.zeros(n, dtype=np.int64), 1)
    best: Clustering | None = None
    sil: dict[int, float] = {}
    for kk in range(lo, hi + 1):
        labels = AgglomerativeClustering(n_clusters=kk).fit_predict(x)
        sil[kk] = float(silhouette_score(x, labels, metric="cosine"))
        if best is None or sil[kk] > sil[best.k]:
            best = Clustering(labels.astype(np.int64), kk)
    assert best is not None
    best.silhouettes = sil
    return best
