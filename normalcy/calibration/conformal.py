"""Calibrated decisions from out-of-sample normal scores: conformal p-values, thresholds, the calibration plan.

A detector keeps the scores of normal data it did not train on. For a new score s the split-conformal p-value is
``p = (1 + #{cal >= s}) / (n_cal + 1)``; flagging ``p <= alpha`` gives a false-alarm rate of at most alpha on
exchangeable normal data. Its mean is exactly ``floor(alpha (n_cal + 1)) / (n_cal + 1)``, so the plan sizes the
calibration set with ``n_cal + 1`` a multiple of 100 (or 20) to make that equal to alpha at 0.01, 0.05, ...
With few normals the hold-out grows to the fewest scores that reach alpha while half the items are left to
train; with fewer still the plan cross-fits K models and keeps them: a new item's cross-conformal p-value compares
its score under each fold model with that fold's held-out scores (no model refitted on all data decides it).
Groups (Mondrian calibration) keep one such calibration per group; p-values are computed within the item's group.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from normalcy.errors import ParameterError

SEVERITY_LEVELS = ("normal", "suspicious", "anomalous", "severe")
SUSPICIOUS_FACTOR = 5.0  # alpha < p <= 5*alpha is "suspicious": in the tail but not flagged
MIN_HOLDOUT_FOLDS = 5
SNAP_GRIDS = (100, 20)  # calibration sizes n with (n + 1) a multiple of these make alpha = j/100 (j/20) exact
# A hold-out may grow to the fewest scores that reach alpha while at least this share of the items is left to train:
# exact split-conformal level (mean false-alarm rate = alpha) instead of cross-conformal's, which averages fold ranks
# and ran 25-31 % below alpha when the fold models disagree (docs/calibration.md). 0 keeps the plain fraction.
MIN_TRAIN_SHARE = 0.5


def check_alpha(alpha: float, name: str = "alpha") -> float:
    """Validate a target false-alarm rate (0 < alpha < 1)."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 < float(alpha) < 1.0:
        raise ParameterError(f"{name} must be a false-alarm rate strictly between 0 and 1, got {alpha!r}")
    return float(alpha)


def exceedances(calibration_scores: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """#{cal >= s} for every score s (ties count as exceeding: the conservative, valid side)."""
    cal = np.sort(np.asarray(calibration_scores, dtype=np.float64))
    s = np.asarray(scores, dtype=np.float64)
    return cal.size - np.searchsorted(cal, s, side="left")


def conformal_p_values(calibration_scores: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """p = (1 + #{cal >= s}) / (n_cal + 1) for every score s (vectorised with a sorted search)."""
    n = np.asarray(calibration_scores).size
    return (1.0 + exceedances(calibration_scores, scores)) / (n + 1.0)


def cross_conformal_p_values(fold_calibration: list[np.ndarray], fold_scores: list[np.ndarray]) -> np.ndarray:
    """Cross-conformal p-value (Vovk 2015): p = (1 + sum_k #{cal_k >= s_k}) / (n + 1), s_k = score by fold model k.

    Each fold's held-out scores are compared with the new item's score under the model that did not see them.
    """
    if len(fold_calibration) != len(fold_scores):
        raise ParameterError(f"got {len(fold_scores)} fold scores for {len(fold_calibration)} calibration folds")
    n = sum(int(np.asarray(c).size) for c in fold_calibration)
    total = sum(exceedances(c, s) for c, s in zip(fold_calibration, fold_scores))
    return (1.0 + total) / (n + 1.0)


def score_threshold(calibration_scores: np.ndarray, alpha: float) -> float:
    """The score t with `score > t` <=> `p <= alpha` (inf when n_cal is too small to ever reach alpha)."""
    cal = np.sort(np.asarray(calibration_scores, dtype=np.float64))[::-1]
    allowed = math.floor(alpha * (cal.size + 1) + 1e-9) - 1  # most calibration scores that may be >= s
    if allowed < 0:
        return math.inf
    if allowed >= cal.size:
        return -math.inf
    return float(cal[allowed])


def expected_fpr(n_cal: int, alpha: float) -> float:
    """Mean false-alarm rate of the split-conformal rule: floor(alpha (n_cal + 1)) / (n_cal + 1) <= alpha."""
    return math.floor(alpha * (n_cal + 1) + 1e-9) / (n_cal + 1)


def snap_size(n_cal: int, n: int, need: int) -> int:
    """Hold-out size near `n_cal` with n_cal + 1 a multiple of 100 (else 20): alpha = j/100 (j/20) is then exact.

    Rounds to the nearer such size, never below `need` (the fewest that can reach alpha) and never taking more
    than half of the `n` items from training; returns `n_cal` unchanged when no such size fits.
    """
    grid = next((g for g in SNAP_GRIDS if n_cal + 1 >= g), 0)
    if not grid:
        return n_cal
    down = (n_cal + 1) // grid * grid - 1
    up = down + grid
    up_ok = up <= n // 2
    if down >= need and (not up_ok or n_cal - down <= up - n_cal):
        return down
    return up if up_ok else n_cal


def calibration_folds(n: int, fraction: float, alpha: float, seed: int, snap: bool = True) -> tuple[str, list[tuple]]:
    """Plan how to get out-of-sample normal scores.

    Returns ``(method, folds)`` with folds as ``(train_idx, cal_idx)``. "holdout": one split, the model is fitted
    on the train part only; the hold-out has ``round(n * fraction)`` items snapped to the nearest size whose
    ``n_cal + 1`` is a multiple of 100 (or 20); when that is too small to ever reach `alpha`, it grows to the fewest
    scores that can, as long as MIN_TRAIN_SHARE of the items stay for training (exact level, one model).
    "cross-conformal": K folds, each scored by a model fitted on the others, for sets smaller still; the K fold
    models are kept and decide new items. "none": fewer than 2 items or fraction 0.
    """
    if fraction <= 0 or n < 2:
        return "none", []
    order = np.random.default_rng(seed).permutation(n)
    n_cal = int(round(n * fraction))
    need = math.ceil(1.0 / alpha - 1e-9) - 1
    if n_cal < need and MIN_TRAIN_SHARE > 0 and n - need >= MIN_TRAIN_SHARE * n:
        n_cal = need  # enough items for a hold-out that reaches alpha: exact level, one model
    if n_cal >= need and n - n_cal >= 1:
        if snap:
            n_cal = snap_size(n_cal, n, need)
        return "holdout", [(np.sort(order[n_cal:]), np.sort(order[:n_cal]))]
    k = min(MIN_HOLDOUT_FOLDS, n)
    folds = []
    for part in np.array_split(order, k):
        folds.append((np.sort(np.setdiff1d(order, part)), np.sort(part)))
    return "cross-conformal", folds


def unreachable_note(alpha: float, n_cal: int) -> str:
    """A plain sentence when no item can ever be flagged at `alpha` with `n_cal` calibration scores, else ''."""
    if n_cal == 0:
        return (f"alpha={alpha:g} unreachable: no calibration scores, p-values are NaN and nothing is flagged; "
                "fit on at least 2 normal items")
    if 1.0 / (n_cal + 1) > alpha:
        need = math.ceil(1.0 / alpha - 1e-9) - 1
        return (f"alpha={alpha:g} unreachable: the smallest p-value with {n_cal} calibration scores is "
                f"{1 / (n_cal + 1):.4f}, so nothing is flagged; use at least {need} normal calibration items or "
                f"alpha >= {1 / (n_cal + 1):.4f}")
    return ""


@dataclass
class Calibration:
    """Out-of-sample normal scores (and optionally pixel-score quantiles) that turn raw scores into decisions.

    `fold_scores` (cross-conformal) holds each fold's held-out scores, in fold order; `scores` is their union.
    `groups` maps a group label to that group's own Calibration (Mondrian calibration).
    """

    scores: np.ndarray
    method: str = "holdout"
    pixel_fpr_levels: np.ndarray | None = None  # descending upper-tail fractions
    pixel_quantiles: np.ndarray | None = None  # pixel score exceeded by that fraction of normal pixels
    fold_scores: list[np.ndarray] | None = None
    groups: dict[str, Calibration] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.scores = np.sort(np.asarray(self.scores, dtype=np.float64))
        if self.fold_scores is not None:
            self.fold_scores = [np.sort(np.asarray(f, dtype=np.float64)) for f in self.fold_scores]

    @property
    def n(self) -> int:
        return int(self.scores.size)

    @property
    def cross(self) -> bool:
        """True when p-values need each fold model's score of the item (cross-conformal)."""
        return self.fold_scores is not None

    def counts(self, scores: np.ndarray, fold_scores: list[np.ndarray] | None = None) -> np.ndarray:
        """#{calibration scores >= s} (summed over folds for cross-conformal, given each fold model's scores)."""
        if self.cross and fold_scores is not None:
            return sum(exceedances(c, s) for c, s in zip(self.fold_scores, fold_scores))
        # split calibration, or a cross-conformal one asked without the fold models' scores (callers that only
        # have the refitted model's score): the pooled out-of-fold scores, conservative for small fits
        return exceedances(self.scores, scores)

    def p_values(self, scores: np.ndarray, fold_scores: list[np.ndarray] | None = None,
                 groups: np.ndarray | None = None) -> np.ndarray:
        """Conformal p-values (NaN when there is no calibration score), within each item's group if grouped."""
        scores = np.asarray(scores, dtype=np.float64)
        if self.groups and groups is not None:
            return self._per_group(lambda c, idx: c.p_values(scores[idx], _take(fold_scores, idx)), groups,
                                   scores.shape)
        if self.n == 0:
            return np.full(scores.shape, np.nan)
        return (1.0 + self.counts(scores, fold_scores)) / (self.n + 1.0)

    def group(self, label: str) -> Calibration:
        """The calibration of one group (a clear error for a label never seen in fit)."""
        if label not in self.groups:
            raise ParameterError(f"group {label!r} was not seen when fitting; known groups: {sorted(self.groups)}")
        return self.groups[label]

    def _per_group(self, fn, groups: np.ndarray, shape: tuple) -> np.ndarray:
        groups = np.asarray(groups).astype(str)
        out = np.full(shape, np.nan)
        for label in np.unique(groups):
            idx = np.flatnonzero(groups == label)
            out[idx] = fn(self.group(str(label)), idx)
        return out

    def threshold(self, alpha: float) -> float:
        """Score threshold for a target false-alarm rate: flag `score > threshold`.

        Exact for a hold-out calibration. Cross-conformal: the pooled out-of-fold scores against the refitted
        model's score, a single-number summary on the conservative side (that model saw more normals, so its
        normal scores run lower: measured 1-31 % fewer false alarms than the fold-model p-values, docs/calibration.md);
        decisions (`p_values` with the fold models' scores) do not use it.
        """
        if self.n == 0:
            return math.inf
        return score_threshold(self.scores, check_alpha(alpha))

    def severe_threshold(self) -> float:
        """Scores this far above the normal range are "severe": max + (max - median) of calibration scores."""
        if self.n == 0:
            return math.inf
        top, mid = float(self.scores[-1]), float(np.median(self.scores))
        return top + max(top - mid, 1e-12)

    def severity(self, scores: np.ndarray, alpha: float, p: np.ndarray | None = None,
                 groups: np.ndarray | None = None) -> list[str]:
        """Grade each score: normal (p > 5a), suspicious (a < p <= 5a), anomalous (p <= a), severe (far beyond).

        Monotone in the score for a fixed alpha, and "anomalous"/"severe" exactly when the decision flags it.
        """
        alpha = check_alpha(alpha)
        scores = np.asarray(scores, dtype=np.float64)
        p = self.p_values(scores) if p is None else np.asarray(p, dtype=np.float64)
        if self.groups and groups is not None:
            severe_t = self._per_group(lambda c, idx: np.full(idx.size, c.severe_threshold()), groups, scores.shape)
        else:
            severe_t = np.full(scores.shape, self.severe_threshold())
        grades = []
        for s, pv, st in zip(scores, p, severe_t):
            if not np.isfinite(pv) or pv > SUSPICIOUS_FACTOR * alpha:
                grades.append("normal")
            elif pv > alpha:
                grades.append("suspicious")
            elif s >= st:
                grades.append("severe")
            else:
                grades.append("anomalous")
        return grades

    def sizes(self, groups: np.ndarray | None = None, n_items: int = 0) -> np.ndarray:
        """Calibration size behind each item's p-value (its group's when grouped)."""
        if self.groups and groups is not None:
            return self._per_group(lambda c, idx: np.full(idx.size, c.n), groups, (len(groups),)).astype(int)
        return np.full(n_items, self.n, dtype=int)

    def pixel_threshold(self, pixel_fpr: float) -> float:
        """Map value exceeded by a fraction `pixel_fpr` of normal calibration pixels (inf if unknown).

        Cross-conformal: the quantiles come from the fold models' out-of-fold maps and are applied to the refitted
        model's maps: expected on the conservative side for the same reason as `threshold` (measured for image
        scores, not for maps); a pixel rate on normal images, not a conformal guarantee.
        """
        if self.pixel_quantiles is None or self.pixel_fpr_levels is None:
            return math.inf
        pixel_fpr = check_alpha(pixel_fpr, "pixel_fpr")
        # levels descend (1 -> tiny); interpolate in log space of the level
        lv = np.log(self.pixel_fpr_levels[::-1])
        q = self.pixel_quantiles[::-1]
        return float(np.interp(math.log(pixel_fpr), lv, q))


def _take(fold_scores: list[np.ndarray] | None, idx: np.ndarray) -> list[np.ndarray] | None:
    return None if fold_scores is None else [np.asarray(f)[idx] for f in fold_scores]


PIXEL_FPR_GRID = np.logspace(0, -6, 241)  # upper-tail fractions from 1 down to 1e-6


def pixel_quantiles(maps: list[np.ndarray], max_pixels: int = 4_000_000, seed: int = 0) -> np.ndarray:
    """Quantiles of normal map values at the upper-tail fractions of PIXEL_FPR_GRID (subsampled if huge)."""
    flat = np.concatenate([np.asarray(m, dtype=np.float32).ravel() for m in maps])
    if flat.size > max_pixels:
        keep = np.random.default_rng(seed).choice(flat.size, max_pixels, replace=False)
        flat = flat[keep]
    return np.quantile(flat, 1.0 - PIXEL_FPR_GRID).astype(np.float64)
