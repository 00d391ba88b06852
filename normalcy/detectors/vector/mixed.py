"""Mixed tables: a numeric detector on the numeric columns plus the categorical detector on the rest.

Both parts calibrate themselves on held-out normal rows; each raw score is turned into its tail surprise
(-log upper-tail probability among those normal scores, see `combine.tail_surprise`) and the two are
added, so neither part dominates because of its units.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from normalcy.detectors.base import ScoreResult
from normalcy.detectors.vector.base import VectorDetector
from normalcy.detectors.vector.categorical import Categorical, as_categories
from normalcy.detectors.vector.checks import as_matrix
from normalcy.detectors.vector.combine import tail_surprise
from normalcy.errors import ParameterError, ShapeError

_INNER_CALIBRATION = 0.2


def _is_number(v: Any) -> bool:
    if isinstance(v, (bool, np.bool_)):
        return False
    try:
        float(v)
    except (TypeError, ValueError):
        return False
    return True


def detect_categorical(X: np.ndarray) -> list[int]:
    """Columns holding any value that is not a number (strings, None) are categorical."""
    if X.dtype.kind in "biuf":
        return []
    return [j for j in range(X.shape[1]) if not all(_is_number(v) for v in X[:, j])]


class Mixed(VectorDetector):
    """Numeric + categorical columns in one detector; `categorical="auto"` finds the non-numeric columns."""

    name = "mixed"

    def __init__(
        self,
        numeric: str = "knn",
        numeric_params: dict[str, Any] | None = None,
        categorical: str | list[int] = "auto",
        pairwise: bool = True,
        alpha: float = 0.05,
        calibration_fraction: float = 0.2,
        seed: int = 0,
    ) -> None:
        self._store_params(locals())

    def _prepare(self, X: Any) -> np.ndarray:
        if hasattr(X, "to_numpy") and not isinstance(X, np.ndarray):
            X = X.to_numpy()
        arr = np.asarray(X, dtype=object) if not isinstance(X, np.ndarray) else X
        if arr.ndim != 2:
            raise ShapeError(f"X must be 2-D (rows x columns), got shape {arr.shape}")
        if getattr(self, "n_features_in_", None) is not None and arr.shape[1] != self.n_features_in_:
            raise ShapeError(f"Mixed was fitted on {self.n_features_in_} columns but X has {arr.shape[1]}")
        return arr

    def _split(self, X: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
        cat = self.categorical_columns_
        num = [j for j in range(X.shape[1]) if j not in set(cat)]
        Xn = as_matrix(X[:, num], "numeric columns of X") if num else None
        Xc = as_categories(X[:, cat], "categorical columns of X") if cat else None
        return Xn, Xc

    def _inner(self) -> tuple[VectorDetector, Categorical]:
        from normalcy.detectors.vector import create_vector_detector

        common = {"alpha": self.alpha, "calibration_fraction": _INNER_CALIBRATION, "seed": self.seed}
        numeric = create_vector_detector(self.numeric, **{**(self.numeric_params or {}), **common})
        return numeric, Categorical(pairwise=self.pairwise, **common)

    def _fit_rows(self, X: np.ndarray) -> None:
        if self.numeric in ("mixed", "categorical"):
            raise ParameterError(f"numeric must be a numeric vector detector, got {self.numeric!r}")
        cat = (
            detect_categorical(X) if self.categorical == "auto" else sorted(int(j) for j in self.categorical)
        )
        if any(not 0 <= j < X.shape[1] for j in cat):
            raise ParameterError(f"categorical columns {cat} out of range for {X.shape[1]} columns")
        self.categorical_columns_ = cat
        Xn, Xc = self._split(X)
        self.numeric_detector_, self.categorical_detector_ = self._inner()
        if Xn is not None:
            self.numeric_detector_.fit(Xn)
        if Xc is not None:
            self.categorical_detector_.fit(Xc)

    def _fit(self, items: np.ndarray) -> None:
        self.n_features_in_ = int(items.shape[1])
        self._fit_rows(items)

    def _score(self, items: np.ndarray) -> ScoreResult:
        Xn, Xc = self._split(items)
        total = np.zeros(len(items))
        for det, part in ((self.numeric_detector_, Xn), (self.categorical_detector_, Xc)):
            if part is not None:
                total += tail_surprise(det.calibration_.scores, det.score(part).scores)
        return ScoreResult(total)

    def _state_arrays(self) -> dict[str, np.ndarray]:
        arrays: dict[str, np.ndarray] = {}
        for prefix, det in (
            ("numeric.", self.numeric_detector_),
            ("categorical.", self.categorical_detector_),
        ):
            if hasattr(det, "calibration_"):
                arrays.update({prefix + k: v for k, v in det._state_arrays().items()})
                arrays[prefix + "calibration"] = det.calibration_.scores
        return arrays

    def _state_meta(self) -> dict[str, Any]:
        meta: dict[str, Any] = {
            **super()._state_meta(),
            "categorical_columns": list(self.categorical_columns_),
        }
        for key, det in (("numeric", self.numeric_detector_), ("categorical", self.categorical_detector_)):
            meta[key] = det._state_meta() if hasattr(det, "calibration_") else None
        return meta

    def _load_arrays(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        from normalcy.calibration.conformal import Calibration

        self.categorical_columns_ = [int(j) for j in meta["categorical_columns"]]
        self.numeric_detector_, self.categorical_detector_ = self._inner()
        for prefix, det in (
            ("numeric.", self.numeric_detector_),
            ("categorical.", self.categorical_detector_),
        ):
            if meta[prefix[:-1]] is None:
                continue
            part = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
            det.calibration_ = Calibration(part.pop("calibration"))
            det._load_state(part, meta[prefix[:-1]])
