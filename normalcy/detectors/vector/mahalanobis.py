"""Mahalanobis distance to a (shrunk or robust) Gaussian fitted on normal rows."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.linalg import pinvh

from normalcy.detectors.base import ScoreResult
from normalcy.detectors.vector.base import VectorDetector
from normalcy.detectors.vector.checks import check_choice
from normalcy.detectors.vector.scaling import apply_scaling, fit_scaling

COVARIANCES = ("empirical", "ledoit_wolf", "mcd")
RIDGE = 1e-6  # added to the standardized covariance diagonal: a column constant in normal data stays usable


def fit_gaussian(Z: np.ndarray, covariance: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Location and precision matrix of standardized rows with the chosen covariance estimator.

    "empirical" (plus a tiny ridge) suits clean normal training rows; "mcd" (FastMCD) resists contaminated
    training rows but is slow in high dimensions; "ledoit_wolf" shrinks towards a scaled identity.
    """
    from sklearn.covariance import EmpiricalCovariance, LedoitWolf, MinCovDet

    if covariance == "mcd":
        est = MinCovDet(random_state=seed).fit(Z)
    elif covariance == "ledoit_wolf":
        est = LedoitWolf().fit(Z)
    else:
        est = EmpiricalCovariance().fit(Z)
    cov = est.covariance_ + RIDGE * np.eye(Z.shape[1])
    return est.location_, pinvh(cov)


class Mahalanobis(VectorDetector):
    """Score = Mahalanobis distance of the standardized row (empirical covariance + tiny ridge by default)."""

    name = "mahalanobis"

    def __init__(
        self,
        covariance: str = "empirical",
        alpha: float = 0.05,
        calibration_fraction: float = 0.2,
        seed: int = 0,
    ) -> None:
        self._store_params(locals())

    def _fit_rows(self, X: np.ndarray) -> None:
        check_choice("covariance", self.covariance, COVARIANCES)
        self.center_, self.scale_ = fit_scaling(X, "standard")
        Z = apply_scaling(X, self.center_, self.scale_)
        self.location_, self.precision_ = fit_gaussian(Z, self.covariance, int(self.seed))

    def _score(self, items: np.ndarray) -> ScoreResult:
        Z = apply_scaling(items, self.center_, self.scale_) - self.location_
        d2 = np.einsum("ij,ij->i", Z @ self.precision_, Z)
        return ScoreResult(np.sqrt(np.maximum(d2, 0.0)))

    def _state_arrays(self) -> dict[str, np.ndarray]:
        return {
            "center": self.center_,
            "scale": self.scale_,
            "location": self.location_,
            "precision": self.precision_,
        }

    def _load_arrays(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        for key in ("center", "scale", "location", "precision"):
            setattr(self, key + "_", np.asarray(arrays[key], dtype=np.float64))
