"""`VectorDetector`: the shared base of every table-row detector (validation and feature-count checks)."""

from __future__ import annotations

from typing import Any, ClassVar, Self

import numpy as np

from normalcy.detectors.base import Detector
from normalcy.detectors.vector.checks import as_matrix, check_features


class VectorDetector(Detector):
    """Rows of numbers in, one anomaly score per row out; subclasses implement `_fit`/`_score` on float64."""

    kind: ClassVar[str] = "vector"
    min_fit_items: ClassVar[int] = 2

    def fit(self, X: Any, y: Any = None, groups: Any = None) -> Self:
        """Learn normality from normal rows (any old fitted state is dropped first); `groups`: see Detector.fit."""
        for attr in self._fitted_attributes():
            delattr(self, attr)
        return super().fit(X, y, groups=groups)

    def _prepare(self, X: Any) -> np.ndarray:
        X = as_matrix(X, "X")
        n_features = getattr(self, "n_features_in_", None)
        if n_features is not None:
            check_features(X, n_features, type(self).__name__)
        return X

    def _fit(self, items: np.ndarray) -> None:
        self.n_features_in_ = int(items.shape[1])
        self._fit_rows(items)

    def _fit_rows(self, X: np.ndarray) -> None:
        """Learn from validated float64 rows (must reset all state)."""
        raise NotImplementedError

    def _state_meta(self) -> dict[str, Any]:
        return {"n_features_in": int(self.n_features_in_)}

    def _load_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.n_features_in_ = int(meta["n_features_in"])
        self._load_arrays(arrays, meta)

    def _load_arrays(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        """Restore the arrays written by `_state_arrays`."""
        raise NotImplementedError
