"""k-nearest-neighbour distance detector: a row far from its k closest normal rows is anomalous."""

from __future__ import annotations

from typing import Any

import numpy as np

from normalcy.detectors.base import ScoreResult
from normalcy.detectors.vector.base import VectorDetector
from normalcy.detectors.vector.checks import check_choice, check_float, check_int
from normalcy.detectors.vector.neighbors import BACKENDS, knn_distances
from normalcy.detectors.vector.scaling import SCALINGS, apply_scaling, fit_scaling

METHODS = ("mean", "largest", "median")


class KNN(VectorDetector):
    """Score = mean (or largest / median) Euclidean distance to the k nearest normal rows (exact search)."""

    name = "knn"

    def __init__(
        self,
        n_neighbors: int = 5,
        method: str = "mean",
        scaling: str = "robust",
        memory_mb: float = 256.0,
        backend: str = "auto",
        alpha: float = 0.05,
        calibration_fraction: float = 0.2,
        seed: int = 0,
    ) -> None:
        self._store_params(locals())

    def _check_params(self) -> None:
        check_int("n_neighbors", self.n_neighbors)
        check_choice("method", self.method, METHODS)
        check_choice("scaling", self.scaling, SCALINGS)
        check_choice("backend", self.backend, BACKENDS)
        check_float("memory_mb", self.memory_mb)

    def _fit_rows(self, X: np.ndarray) -> None:
        self._check_params()
        self.center_, self.scale_ = fit_scaling(X, self.scaling)
        self.reference_ = apply_scaling(X, self.center_, self.scale_)

    def _score(self, items: np.ndarray) -> ScoreResult:
        k = min(int(self.n_neighbors), len(self.reference_))
        Z = apply_scaling(items, self.center_, self.scale_)
        d = knn_distances(Z, self.reference_, k, memory_mb=float(self.memory_mb), backend=self.backend)
        if self.method == "largest":
            return ScoreResult(d[:, -1])
        if self.method == "median":
            return ScoreResult(np.median(d, axis=1))
        return ScoreResult(d.mean(axis=1))

    def _state_arrays(self) -> dict[str, np.ndarray]:
        return {"reference": self.reference_, "center": self.center_, "scale": self.scale_}

    def _load_arrays(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.reference_ = np.asarray(arrays["reference"], dtype=np.float64)
        self.center_ = np.asarray(arrays["center"], dtype=np.float64)
        self.scale_ = np.asarray(arrays["scale"], dtype=np.float64)
