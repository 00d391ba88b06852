"""The one protocol every detector follows: `fit` on normal data, `score`/`predict` on new data.

`Detector` owns what is the same for all methods: validation, the calibration hold-out (or cross-fitting),
conformal p-values, severity and pixel masks. A method implements only `_fit(items)` and `_score(items)`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

import numpy as np

from normalcy.calibration.conformal import PIXEL_FPR_GRID, Calibration, check_alpha, pixel_quantiles
from normalcy.calibration.fitting import decisions, fit_calibrated, score_items
from normalcy.detectors.estimator import Estimator
from normalcy.errors import ParameterError


@dataclass
class ScoreResult:
    """Raw detector output: one score per item (higher = more anomalous) and optional per-item maps."""

    scores: np.ndarray
    maps: list[np.ndarray] | None = None
    fold_scores: list[np.ndarray] | None = None  # each kept fold model's scores (cross-conformal calibration)
    groups: np.ndarray | None = None  # each item's calibration group when found automatically


@dataclass
class Prediction:
    """A calibrated decision for one item; `status="error"` rows carry the reason instead of a score."""

    score: float = float("nan")
    p_value: float = float("nan")
    is_anomaly: bool = False
    severity: str = "normal"
    anomaly_map: np.ndarray | None = field(default=None, repr=False)
    mask: np.ndarray | None = field(default=None, repr=False)
    path: str | None = None
    status: str = "ok"
    error: str = ""
    explanation: dict[str, Any] | None = field(default=None, repr=False)  # regions + summary (normalcy.explain.summary)

    def __post_init__(self) -> None:
        if self.status == "error":  # an unreadable input is never graded "normal"
            self.severity = "error"
    calibration: str = "conformal"  # "conformal", "transfer" (learned on other data, no guarantee) or "none"
    p_low: float = float("nan")  # interval for the item's normal tail probability (see calibration.uncertainty)
    p_high: float = float("nan")
    decision: str = ""  # "anomalous", "normal" or "uncertain" (the p interval straddles alpha)
    n_calibration: int = 0  # calibration scores behind the p-value (the item's group's when grouped)
    group: str | None = None  # calibration group (Mondrian calibration), None when calibrated as one pool
    calibration_note: str = ""  # e.g. why alpha cannot be reached with this calibration size

    @property
    def defect_area(self) -> int:
        """Number of pixels in the calibrated defect mask (0 without a mask)."""
        return int(self.mask.sum()) if self.mask is not None else 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no arrays)."""
        return {
            "path": self.path,
            "score": None if not np.isfinite(self.score) else float(self.score),
            "p_value": None if not np.isfinite(self.p_value) else float(self.p_value),
            "is_anomaly": None if self.status == "error" else bool(self.is_anomaly),  # no decision, never "normal"
            "severity": "error" if self.status == "error" else self.severity,
            "defect_area": self.defect_area,
            "status": self.status,
            "error": self.error,
            "calibration": self.calibration,
            "p_interval": None if not np.isfinite(self.p_low) else [float(self.p_low), float(self.p_high)],
            "decision": self.decision or ("error" if self.status == "error" else ""),
            "n_calibration": int(self.n_calibration),
            "group": self.group,
            "calibration_note": self.calibration_note,
        } | self._explanation_fields()

    def _explanation_fields(self) -> dict[str, Any]:
        """Regions, summary sentence and (when known) nearest defect type / narrator reply, for JSON outputs."""
        if self.explanation is None:
            return {}
        e = self.explanation
        return {"regions": e["regions"], "explanation": e["summary"]} | {
            k: e[k] for k in ("nearest_type", "narrator") if k in e}


def take(items: Any, idx: np.ndarray) -> Any:
    """Subset a list or an array by integer indices."""
    if isinstance(items, np.ndarray):
        return items[idx]
    return [items[int(i)] for i in idx]


class Detector(Estimator):
    """Base class. Subclasses list their parameters in `__init__` (stored as-is) and implement the hooks."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "image"  # "image" or "vector": which inputs `_prepare` accepts
    min_fit_items: ClassVar[int] = 1

    # ---- hooks for subclasses -------------------------------------------------------------------------
    def _prepare(self, X: Any) -> Any:
        """Validate raw input and return an indexable collection of items."""
        raise NotImplementedError

    def _fit(self, items: Any) -> None:
        """Learn normality from `items` (called on a subset during cross-fitting: must reset state)."""
        raise NotImplementedError

    def _score(self, items: Any) -> ScoreResult:
        """Score already-prepared items."""
        raise NotImplementedError

    # ---- public API -----------------------------------------------------------------------------------
    def fit(self, X: Any, y: Any = None, groups: Any = None) -> Self:
        """Learn what normal looks like from normal data; keeps out-of-sample scores for calibration.

        `groups`: one label per item for group-conditional (Mondrian) calibration, p-values within the item's
        group, or "auto" to find normal modes by k-means (see normalcy.calibration.groups).
        """
        items = self._prepare(X)
        n = len(items)
        if n < self.min_fit_items:
            raise ParameterError(
                f"{type(self).__name__} needs at least {self.min_fit_items} normal items to fit, got {n}"
            )
        fit_calibrated(self, items, groups)
        self.n_fit_ = n
        self._warn_if_alpha_unreachable(check_alpha(self.alpha))
        return self

    def _warn_if_alpha_unreachable(self, alpha: float) -> None:
        """Say so when too few normal scores exist for any image to ever be flagged at `alpha`."""
        n_cal = self.calibration_.n
        if n_cal == 0:
            warnings.warn(f"{type(self).__name__}: no calibration scores (fit on {self.n_fit_} items): p-values are "
                          "NaN and nothing is flagged; fit on at least 2 normal items", UserWarning, stacklevel=3)
        elif 1.0 / (n_cal + 1) > alpha:
            warnings.warn(f"{type(self).__name__}: with {n_cal} calibration scores the smallest p-value is "
                          f"{1 / (n_cal + 1):.4f} > alpha={alpha}, so nothing can be flagged at this alpha; use at "
                          f"least {int(np.ceil(1 / alpha)) - 1} normal items or a larger alpha",
                          UserWarning, stacklevel=3)

    def _set_calibration(self, method: str, scores: list[np.ndarray], maps: list[np.ndarray]) -> None:
        cal = Calibration(np.concatenate(scores) if scores else np.empty(0), method=method)
        if maps:
            cal.pixel_fpr_levels = PIXEL_FPR_GRID.copy()
            cal.pixel_quantiles = pixel_quantiles(maps, seed=getattr(self, "seed", 0))
        self.calibration_ = cal

    def score(self, X: Any) -> ScoreResult:
        """Raw scores (higher = more anomalous) and, for images, anomaly maps at each image's own size."""
        self.check_fitted()
        return score_items(self, self._prepare(X))

    def decision_function(self, X: Any) -> np.ndarray:
        """Raw anomaly scores only (PyOD convention: higher = more anomalous)."""
        return self.score(X).scores

    def predict(self, X: Any, alpha: float | None = None, pixel_fpr: float | None = None,
                groups: Any = None) -> list[Prediction]:
        """Calibrated decisions: score, conformal p-value, is_anomaly at `alpha`, severity, map and mask."""
        self.check_fitted()
        result = self.score(X)
        paths = self._item_paths(X, len(result.scores))
        kw = {} if groups is None else {"groups": groups}  # overrides of decide may not take groups
        return self.decide(result, alpha=alpha, pixel_fpr=pixel_fpr, paths=paths, **kw)

    def decide(
        self,
        result: ScoreResult,
        alpha: float | None = None,
        pixel_fpr: float | None = None,
        paths: list[str | None] | None = None,
        groups: Any = None,
    ) -> list[Prediction]:
        """Turn raw scores (and maps) into calibrated Predictions without rescoring (`groups`: one label per item)."""
        alpha = check_alpha(self.alpha if alpha is None else alpha)
        pixel_fpr = check_alpha(getattr(self, "pixel_fpr", 0.001) if pixel_fpr is None else pixel_fpr)
        cal: Calibration = self.calibration_
        scores = np.asarray(result.scores, dtype=np.float64)
        d = decisions(cal, result, alpha, groups)
        p, grades = d.p, d.grades
        pix_t = cal.pixel_threshold(pixel_fpr) if result.maps is not None else None
        out = []
        for i, s in enumerate(scores):
            flagged = bool(np.isfinite(p[i]) and p[i] <= alpha)
            amap = result.maps[i] if result.maps is not None else None
            mask = None
            if amap is not None and pix_t is not None:
                mask = (amap > pix_t) if flagged else np.zeros(amap.shape, dtype=bool)
            out.append(
                Prediction(
                    score=float(s), p_value=float(p[i]), is_anomaly=flagged, severity=grades[i],
                    anomaly_map=amap, mask=mask, path=paths[i] if paths else None,
                    calibration="conformal" if cal.n else "none", p_low=float(d.low[i]), p_high=float(d.high[i]),
                    decision=d.status[i], n_calibration=int(d.n_cal[i]),
                    group=None if d.groups is None else str(d.groups[i]), calibration_note=d.notes[i],
                )
            )
        return out

    def _item_paths(self, X: Any, n: int) -> list[str | None]:
        """Best-effort source path of each item (None for in-memory arrays)."""
        return [None] * n

    # ---- persistence (normalcy.store) ----------------------------------------------------------------
    def save(self, path: Any) -> Any:
        """Write this fitted detector to one safe file (safetensors + JSON metadata, atomic)."""
        from normalcy.store import save

        return save(self, path)

    def _state_arrays(self) -> dict[str, np.ndarray]:
        """Fitted arrays to save (names -> arrays); scalars go through `_state_meta`."""
        raise NotImplementedError(f"{type(self).__name__} cannot be saved yet")

    def _load_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        """Restore fitted state saved by `_state_arrays`/`_state_meta`."""
        raise NotImplementedError(f"{type(self).__name__} cannot be loaded yet")

    def _state_meta(self) -> dict[str, Any]:
        return {}
