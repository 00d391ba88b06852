"""PCA reconstruction error: how far a row lies from the subspace that explains most normal variance."""

from __future__ import annotations

from typing import Any

import numpy as np

from normalcy.detectors.base import ScoreResult
from normalcy.detectors.vector.base import VectorDetector
from normalcy.detectors.vector.checks import check_choice
from normalcy.detectors.vector.scaling import SCALINGS, apply_scaling, fit_scaling
from normalcy.errors import ParameterError

WEIGHTINGS = ("none", "variance")


def _n_kept(eigvals: np.ndarray, n_components: float | int) -> int:
    """Number of leading components to keep: an int count or a fraction of the total variance."""
    d = eigvals.size
    if isinstance(n_components, bool) or not isinstance(n_components, (int, float)) or n_components <= 0:
        raise ParameterError(
            f"n_components must be a count >= 1 or a variance fraction in (0, 1); got {n_components!r}"
        )
    if isinstance(n_components, int) or n_components >= 1:
        return int(min(int(n_components), d - 1))
    total = eigvals.sum()
    if total <= 0:
        return 0
    ratio = np.cumsum(eigvals) / total
    return int(min(np.searchsorted(ratio, n_components) + 1, d - 1))


class PCA(VectorDetector):
    """Score = squared distance to the leading principal subspace (optionally per-axis variance-weighted)."""

    name = "pca"

    def __init__(
        self,
        n_components: float | int = 0.9,
        weighting: str = "none",
        scaling: str = "standard",
        alpha: float = 0.05,
        calibration_fraction: float = 0.2,
        seed: int = 0,
    ) -> None:
        self._store_params(locals())

    def _fit_rows(self, X: np.ndarray) -> None:
        check_choice("weighting", self.weighting, WEIGHTINGS)
        check_choice("scaling", self.scaling, SCALINGS)
        self.center_, self.scale_ = fit_scaling(X, self.scaling)
        Z = apply_scaling(X, self.center_, self.scale_)
        self.mean_ = Z.mean(axis=0)
        Zc = Z - self.mean_
        cov = (Zc.T @ Zc) / len(Zc)  # population covariance (as np.cov(bias=True), without its overhead)
        eigvals, eigvecs = np.linalg.eigh(cov)
        eigvals, eigvecs = np.maximum(eigvals[::-1], 0.0), eigvecs[:, ::-1]
        k = _n_kept(eigvals, self.n_components)
        self.n_components_ = k
        self.residual_axes_ = eigvecs[:, k:]
        floor = max(eigvals.max(), 1e-12) * 1e-6
        self.residual_variance_ = np.maximum(eigvals[k:], floor)

    def _score(self, items: np.ndarray) -> ScoreResult:
        proj = (apply_scaling(items, self.center_, self.scale_) - self.mean_) @ self.residual_axes_
        sq = proj * proj
        if self.weighting == "variance":
            sq = sq / self.residual_variance_
        return ScoreResult(sq.sum(axis=1))

    def _state_arrays(self) -> dict[str, np.ndarray]:
        return {
            "center": self.center_,
            "scale": self.scale_,
            "mean": self.mean_,
            "residual_axes": self.residual_axes_,
            "residual_variance": self.residual_variance_,
        }

    def _state_meta(self) -> dict[str, Any]:
        return {**super()._state_meta(), "n_components": int(self.n_components_)}

    def _load_arrays(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        for key in ("center", "scale", "mean", "residual_axes", "residual_variance"):
            setattr(self, key + "_", np.asarray(arrays[key], dtype=np.float64))
        self.n_components_ = int(meta["n_components"])
