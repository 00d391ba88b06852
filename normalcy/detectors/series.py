"""Time series: sliding windows -> any vector detector -> per-timestamp scores, plus honest metrics.

A window of `window` consecutive rows (optionally differenced) becomes one vector; each timestamp's score
is the max (or mean) over the windows that cover it. The model is fitted on a normal stretch of the series;
calibration holds out the *last* part of that stretch (time order kept, no overlapping windows shared),
so p-values mean "as unusual as the latest normal data".

With `memory="past"` (the default for kNN) a window is compared with the fitted windows AND every earlier,
non-overlapping window of the series being scored (a causal, left-only self-join, as NAB's streaming detectors
learn as they go): a change is flagged when it starts, and a new level that persists stops being an anomaly
once it has been seen `n_neighbors` times, instead of flagging the whole rest of the series.

Metrics never use point adjustment (which marks a whole event as found when one point is): point AUROC and
AUPR, and the composite event F1 (Garg et al., 2021): event-wise recall (each labelled event counts once)
with point-wise precision, maximised over thresholds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from normalcy.detectors.base import Detector, ScoreResult
from normalcy.detectors.vector import create_vector_detector
from normalcy.detectors.vector.checks import as_matrix, check_choice, check_int
from normalcy.detectors.vector.neighbors import knn_distances
from normalcy.detectors.vector.scaling import apply_scaling
from normalcy.errors import DataError, EmptyFolderError, ParameterError, PathNotFoundError, ShapeError
from normalcy.metrics import auroc, average_precision

REDUCTIONS = ("max", "mean")
MEMORIES = ("auto", "fit", "past")
# kNN on windows with memory="past": 2 neighbours, so a new level stops counting as anomalous after two sightings
# (NAB, 29 series: k = 1, 2, 3 give event F1 0.861 / 0.870 / 0.861, k = 5 0.8505; docs/vector.md)
SERIES_KNN_DEFAULTS = {"n_neighbors": 2}


# --- windows ----------------------------------------------------------------------------------------------
def as_series(X: Any) -> np.ndarray:
    """A 1-D (univariate) or 2-D (time x channels) finite series as a float64 (time x channels) array."""
    arr = np.asarray(X, dtype=np.float64) if not isinstance(X, np.ndarray) else X
    if arr.ndim == 1:
        arr = arr.reshape(-1, 1)
    return as_matrix(arr, "series")


def sliding_windows(series: np.ndarray, window: int, step: int = 1, difference: int = 0) -> tuple:
    """Windows as rows (n_windows x window*channels) and the start index (in the original series) of each.

    `difference=d` applies d-th order differencing first; the windows then still index original timestamps
    (a differenced value at t belongs to timestamp t).
    """
    s = as_series(series)
    window, step = check_int("window", window), check_int("step", step)
    difference = check_int("difference", difference, low=0)
    d = np.diff(s, n=difference, axis=0) if difference else s
    if len(d) < window:
        raise ShapeError(
            f"series of {len(s)} rows is too short for window={window} after difference={difference}"
        )
    starts = np.arange(0, len(d) - window + 1, step)
    last = len(d) - window
    if starts[-1] != last:  # always cover the end of the series
        starts = np.append(starts, last)
    view = np.lib.stride_tricks.sliding_window_view(d, window, axis=0)  # (n, channels, window)
    rows = view[starts].transpose(0, 2, 1).reshape(len(starts), -1)
    return np.ascontiguousarray(rows), starts + difference


def window_to_point_scores(
    window_scores: np.ndarray, starts: np.ndarray, window: int, n: int, reduce: str = "max"
) -> np.ndarray:
    """Per-timestamp score: max (or mean) over the windows covering it; NaN where no window does."""
    check_choice("reduce", reduce, REDUCTIONS)
    ws = np.asarray(window_scores, dtype=np.float64)
    if reduce == "max":
        out = np.full(n, -np.inf)
        for offset in range(window):  # window is small; each pass is one vectorized scatter-max
            idx = starts + offset
            keep = idx < n
            np.maximum.at(out, idx[keep], ws[keep])
        out[np.isneginf(out)] = np.nan
        return out
    total, count = np.zeros(n), np.zeros(n)
    for offset in range(window):
        idx = starts + offset
        keep = idx < n
        np.add.at(total, idx[keep], ws[keep])
        np.add.at(count, idx[keep], 1)
    with np.errstate(invalid="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _fill_edges(scores: np.ndarray) -> np.ndarray:
    """Timestamps before the first window (lost to differencing) take the nearest covered score."""
    out = scores.copy()
    ok = np.flatnonzero(np.isfinite(out))
    if ok.size:
        out[: ok[0]] = out[ok[0]]
        out[ok[-1] + 1 :] = out[ok[-1]]
    return out


# --- detector ---------------------------------------------------------------------------------------------
class SeriesDetector(Detector):
    """Fit on a normal stretch of a series; score every timestamp of a (new or the same) series."""

    name: ClassVar[str] = "series"
    kind: ClassVar[str] = "series"

    def __init__(
        self,
        window: int = 64,
        step: int = 1,
        difference: int = 0,
        detector: str = "knn",
        detector_params: dict[str, Any] | None = None,
        reduce: str = "max",
        memory: str = "auto",
        alpha: float = 0.05,
        calibration_fraction: float = 0.2,
        seed: int = 0,
    ) -> None:
        self._store_params(locals())

    def _prepare(self, X: Any) -> np.ndarray:
        s = as_series(X)
        channels = getattr(self, "n_channels_", None)
        if channels is not None and s.shape[1] != channels:
            raise ShapeError(
                f"SeriesDetector was fitted on {channels} channel(s) but the series has {s.shape[1]}"
            )
        return s

    def fit(self, X: Any, y: Any = None) -> SeriesDetector:
        """Learn normal windows; calibrate on the last `calibration_fraction` of the stretch (time order)."""
        for attr in self._fitted_attributes():
            delattr(self, attr)
        s = self._prepare(X)
        check_choice("reduce", self.reduce, REDUCTIONS)
        fraction = float(self.calibration_fraction)
        if not 0.0 <= fraction < 1.0:
            raise ParameterError(f"calibration_fraction must be in [0, 1), got {fraction}")
        n_cal = int(round(len(s) * fraction))
        min_rows = int(self.window) + int(self.difference) + 1
        cal_scores: list[np.ndarray] = []
        if n_cal >= min_rows and len(s) - n_cal >= min_rows:
            self._fit(s[: len(s) - n_cal])
            cal_scores = [self._score(s[len(s) - n_cal :]).scores]
            method = "holdout"
        else:
            method = "none"
            self._fit(s)
        self._set_calibration(method, cal_scores, [])
        self.n_fit_ = len(s)
        return self

    def _memory(self) -> str:
        """The resolved memory: "past" (kNN only) or "fit"."""
        check_choice("memory", self.memory, MEMORIES)
        if self.memory == "auto":
            return "past" if self.detector == "knn" else "fit"
        if self.memory == "past" and self.detector != "knn":
            raise ParameterError(f"memory='past' needs detector='knn' (distances to earlier windows), got "
                                 f"{self.detector!r}; use memory='fit' or detector='knn'")
        return self.memory

    def _inner(self, legacy: bool = False) -> Any:
        """A fresh window detector: `detector` with `detector_params` over the series defaults (none for models
        saved before those defaults existed)."""
        defaults = SERIES_KNN_DEFAULTS if self.detector == "knn" and not legacy else {}
        return create_vector_detector(self.detector, **{**defaults, **(self.detector_params or {}), "seed": self.seed})

    def _fit(self, items: np.ndarray) -> None:
        self.n_channels_ = int(items.shape[1])
        rows, _ = sliding_windows(items, self.window, self.step, self.difference)
        if self.detector in ("mixed", "categorical"):
            raise ParameterError(f"detector must be a numeric vector detector, got {self.detector!r}")
        self._memory()
        inner = self._inner()
        inner._fit(rows)
        self.detector_ = inner
        self.fit_series_ = np.array(items, dtype=np.float64)

    def _score(self, items: np.ndarray) -> ScoreResult:
        rows, starts = sliding_windows(items, self.window, 1, self.difference)
        if self._memory() == "past":
            ws = self._past_scores(items, rows)
        else:
            ws = self.detector_._score(rows).scores
        return ScoreResult(
            _fill_edges(window_to_point_scores(ws, starts, int(self.window), len(items), self.reduce))
        )

    def _past_scores(self, items: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """kNN window scores against the fitted windows plus the scored series' own earlier windows.

        When the scored series starts with the fitted stretch (scoring the same series further on), its own
        past already holds those windows: they are not counted twice, and windows inside the stretch are
        scored against the fit as with memory="fit".
        """
        knn = self.detector_
        k = min(int(knn.n_neighbors), len(knn.reference_))
        Z = apply_scaling(rows, knn.center_, knn.scale_)
        fit = self.fit_series_
        same = 0 < len(fit) <= len(items) and np.array_equal(items[: len(fit)], fit)
        n_inside = len(fit) - int(self.window) - int(self.difference) + 1 if same else 0
        d_past = past_knn_distances(Z, k, exclusion=int(self.window), memory_mb=float(knn.memory_mb))
        if same:
            # inside the stretch, and just after a stretch shorter than two windows (no earlier window yet): the fit
            use_fit = np.arange(len(Z)) < n_inside
            use_fit |= ~np.isfinite(d_past).any(axis=1)
            d_past[use_fit] = knn_distances(Z[use_fit], knn.reference_, k, memory_mb=float(knn.memory_mb))
            d = d_past
        else:
            d_fit = knn_distances(Z, knn.reference_, k, memory_mb=float(knn.memory_mb))
            d = np.sort(np.concatenate([d_fit, d_past], axis=1), axis=1)[:, :k]
        finite = np.isfinite(d)
        if knn.method == "largest":
            d = np.where(finite, d, -np.inf)
            out = d.max(axis=1)
        elif knn.method == "median":
            out = np.nanmedian(np.where(finite, d, np.nan), axis=1)
        else:
            out = np.where(finite, d, 0.0).sum(axis=1) / np.maximum(finite.sum(axis=1), 1)
        out[~finite.any(axis=1)] = np.nan  # no reference at all (series start, nothing fitted before it)
        return out

    def _state_arrays(self) -> dict[str, np.ndarray]:
        out = {"detector." + k: v for k, v in self.detector_._state_arrays().items()}
        out["fit_series"] = self.fit_series_
        return out

    def _state_meta(self) -> dict[str, Any]:
        return {"n_channels": self.n_channels_, "detector": self.detector_._state_meta()}

    def _load_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.n_channels_ = int(meta["n_channels"])
        inner = self._inner(legacy="fit_series" not in arrays)
        inner._load_state({k[len("detector.") :]: v for k, v in arrays.items() if k.startswith("detector.")},
                          meta["detector"])
        self.detector_ = inner
        if "fit_series" in arrays:
            self.fit_series_ = np.asarray(arrays["fit_series"], dtype=np.float64)
        else:  # saved before memory="past" existed: keep scoring against the fitted windows only, as then
            self.fit_series_ = np.empty((0, self.n_channels_))
            self.memory = "fit"


def past_knn_distances(Z: np.ndarray, k: int, exclusion: int, memory_mb: float = 256.0) -> np.ndarray:
    """Ascending distances (n x k) from each row i to its k nearest rows j <= i - exclusion (inf where fewer).

    Rows are consecutive windows, so `exclusion=window` keeps overlapping (trivially similar) windows out. Blocks
    of queries against their causal prefix: one float32 BLAS product (numpy, as in `neighbors`) + torch top-k
    each, distances recomputed in float64.
    """
    n = len(Z)
    out = np.full((n, k), np.inf)
    if n <= exclusion:
        return out
    ref = np.ascontiguousarray(Z - Z.mean(axis=0), dtype=np.float32)
    ref_sq = np.einsum("ij,ij->i", ref, ref)
    block = max(1, min(n, int(memory_mb * 2**20) // (4 * max(n, 1))))
    with torch.inference_mode():
        for qs in range(exclusion, n, block):
            qe = min(n, qs + block)
            hi = qe - exclusion  # references 0 .. hi-1 are before at least the last query of the block
            d2 = ref[qs:qe] @ ref[:hi].T  # |q|^2 is the same for every reference of a query: left out
            d2 *= -2.0
            d2 += ref_sq[:hi]
            allowed = np.arange(hi)[None, :] <= np.arange(qs, qe)[:, None] - exclusion
            d2[~allowed] = np.inf
            kk = min(k, hi)
            vals, idx = torch.topk(torch.from_numpy(d2), kk, dim=1, largest=False)
            idx_np, ok = idx.numpy(), torch.isfinite(vals).numpy()
            diff = Z[idx_np] - Z[qs:qe, None, :]
            exact = np.sqrt(np.einsum("ijk,ijk->ij", diff, diff))
            out[qs:qe, :kk] = np.sort(np.where(ok, exact, np.inf), axis=1)
    return out


# --- metrics ----------------------------------------------------------------------------------------------
def label_events(labels: np.ndarray) -> list[tuple[int, int]]:
    """Contiguous runs of 1s as (start, end) index pairs, end exclusive."""
    y = np.asarray(labels).astype(bool).astype(np.int8)
    edges = np.diff(np.concatenate([[0], y, [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def composite_f1(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Best composite F1 over thresholds: event recall (an event counts once it has one flagged point) and
    point precision (every flagged point outside events is a false alarm). No point adjustment."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    events = label_events(y)
    if not events or y.all():
        return {
            "f1": float("nan"),
            "precision": float("nan"),
            "recall": float("nan"),
            "threshold": float("nan"),
        }
    event_max = np.sort([s[a:b].max() for a, b in events])
    thresholds = np.unique(s)[::-1]  # flag score >= t
    order = np.sort(s)
    flagged = s.size - np.searchsorted(order, thresholds, side="left")
    pos = np.sort(s[y])
    tp = pos.size - np.searchsorted(pos, thresholds, side="left")
    precision = tp / flagged
    recall = (event_max.size - np.searchsorted(event_max, thresholds, side="left")) / event_max.size
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    best = int(np.argmax(f1))
    return {
        "f1": float(f1[best]),
        "precision": float(precision[best]),
        "recall": float(recall[best]),
        "threshold": float(thresholds[best]),
    }


def series_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Point AUROC, point AUPR and best composite (event) F1 of per-timestamp scores."""
    return {
        "auroc": auroc(labels, scores),
        "aupr": average_precision(labels, scores),
        "event_f1": composite_f1(labels, scores)["f1"],
    }


# --- NAB --------------------------------------------------------------------------------------------------
@dataclass
class NabSeries:
    """One NAB series: name ("category/file.csv"), timestamps, values and per-row window labels."""

    name: str
    timestamps: np.ndarray
    values: np.ndarray
    labels: np.ndarray
    windows: list[tuple[str, str]]

    @property
    def category(self) -> str:
        return self.name.split("/", 1)[0]


def _parse_time(text: str) -> np.datetime64:
    return np.datetime64(datetime.fromisoformat(text.strip()), "s")


def read_nab_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """timestamps (datetime64[s]) and float values of one NAB `timestamp,value` CSV."""
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or lines[0].strip().lower() != "timestamp,value":
        raise DataError(f"{path}: expected header 'timestamp,value'")
    ts, vals = [], []
    for i, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        t, sep, v = line.partition(",")
        try:
            ts.append(_parse_time(t))
            vals.append(float(v))
        except ValueError:
            raise DataError(f"{path}: line {i} is not 'timestamp,value': {line!r}") from None
    values = np.asarray(vals)
    if not np.isfinite(values).all():
        raise ShapeError(f"{path}: values contain NaN/inf")
    return np.asarray(ts, dtype="datetime64[s]"), values


def read_nab(root: str | Path, categories: list[str] | None = None) -> list[NabSeries]:
    """Every `data/<category>/<file>.csv` under a NAB folder, labelled from `labels/combined_windows.json`."""
    root = Path(root)
    if not root.is_dir():
        raise PathNotFoundError(f"NAB folder not found: {root}")
    label_file = root / "labels" / "combined_windows.json"
    if not label_file.is_file():
        raise DataError(f"{root}: missing labels/combined_windows.json")
    windows = json.loads(label_file.read_text(encoding="utf-8"))
    out = []
    for csv_path in sorted((root / "data").glob("*/*.csv")):
        name = f"{csv_path.parent.name}/{csv_path.name}"
        if categories and csv_path.parent.name not in categories:
            continue
        if name not in windows:
            continue
        ts, values = read_nab_csv(csv_path)
        labels = np.zeros(len(ts), dtype=np.int64)
        for start, end in windows[name]:
            labels[(ts >= _parse_time(start)) & (ts <= _parse_time(end))] = 1
        out.append(NabSeries(name, ts, values, labels, [tuple(w) for w in windows[name]]))
    if not out:
        raise EmptyFolderError(f"{root}: no labelled NAB series under data/<category>/*.csv")
    return out
