"""scikit-learn outlier-detector adapter for the vector detectors (Pipelines, GridSearchCV, check_estimator).

The native API stays as it is (`score(X).scores`: higher = more anomalous; `predict` gives calibrated
`Prediction`s). `SklearnDetector` wraps one native detector and speaks scikit-learn's outlier convention, like
`IsolationForest`:

- `score_samples(X)`: higher = more normal (the negated native score);
- `offset_`: minus the native calibrated threshold at `alpha` (conformal, from held-out normal rows), so
  `decision_function(X) = score_samples(X) - offset_` is negative exactly for the rows `predict` flags;
- `predict(X)`: -1 for outliers (conformal p-value <= alpha), +1 for inliers; `fit_predict` from OutlierMixin.

Parameters of the wrapped detector are nested (`detector__n_neighbors`), so GridSearchCV and `clone` work:

    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from normalcy.detectors.vector import KNN
    from normalcy.detectors.vector.sklearn_api import SklearnDetector
    pipe = make_pipeline(StandardScaler(), SklearnDetector(KNN(n_neighbors=5))).fit(X_normal)
    labels = pipe.predict(X_new)        # -1 = anomaly, +1 = normal
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, OutlierMixin, clone
from sklearn.utils.validation import check_is_fitted, validate_data


class SklearnDetector(OutlierMixin, BaseEstimator):
    """A normalcy vector detector as a scikit-learn outlier detector (-1 = outlier, +1 = inlier)."""

    def __init__(self, detector: Any = None, alpha: float | None = None) -> None:
        self.detector = detector
        self.alpha = alpha

    def _native(self) -> Any:
        from normalcy.detectors.vector.knn import KNN

        det = clone(self.detector) if self.detector is not None else KNN()
        if self.alpha is not None:
            det.set_params(alpha=self.alpha)
        return det

    def fit(self, X: Any, y: Any = None) -> SklearnDetector:
        """Fit the wrapped detector on (normal) rows; `y` is ignored."""
        X = validate_data(self, X, dtype=np.float64, ensure_min_samples=2)
        self.detector_ = self._native().fit(X)
        threshold = self.detector_.calibration_.threshold(float(self.detector_.alpha))
        if not math.isfinite(threshold):  # too few calibration rows to reach alpha: flag beyond the largest one
            cal = self.detector_.calibration_.scores
            threshold = float(cal.max()) if cal.size else float(np.max(self.detector_.score(X).scores))
        self.offset_ = -float(threshold)
        return self

    def score_samples(self, X: Any) -> np.ndarray:
        """Normality of each row: the negated native anomaly score (higher = more normal)."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return -np.asarray(self.detector_.score(X).scores, dtype=np.float64)

    def decision_function(self, X: Any) -> np.ndarray:
        """score_samples - offset_: negative for the rows flagged at `alpha`."""
        return self.score_samples(X) - self.offset_

    def predict(self, X: Any) -> np.ndarray:
        """-1 for outliers, +1 for inliers."""
        return np.where(self.decision_function(X) < 0, -1, 1)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags


__all__ = ["SklearnDetector"]
