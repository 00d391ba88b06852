"""Calibrated decisions from held-out normal scores: conformal p-values, thresholds, severity, pixel masks.

A detector keeps the scores of normal data it did not train on. For a new score s the conformal p-value is
``p = (1 + #{cal >= s}) / (n_cal + 1)``; flagging ``p <= alpha`` gives a false-alarm rate of at most alpha on
exchangeable normal data, without any labelled defect and without guessing a contamination rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from normalcy.errors import ParameterError

SEVERITY_LEVELS = ("normal", "suspicious", "anomalous", "severe")
SUSPICIOUS_FACTOR = 5.0  # alpha < p <= 5*alpha is "suspicious": in the tail but not flagged
MIN_HOLDOUT_FOLDS = 5


def check_alpha(alpha: float, name: str = "alpha") -> float:
    """Validate a target false-alarm rate (0 < alpha < 1)."""
    if not isinstance(alpha, (int, float)) or not 0.0 < float(alpha) < 1.0:
        raise ParameterError(f"{name} must be a false-alarm rate strictly between 0 and 1, got {alpha!r}")
    return float(alpha)


def conformal_p_values(calibration_scores: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """p = (1 + #{cal >= s}) / (n_cal + 1) for every score s (vectorised with a sorted search)."""
    cal = np.sort(np.asarray(calibration_scores, dtype=np.float64))
    s = np.asarray(scores, dtype=np.float64)
    n_ge = cal.size - np.searchsorted(cal, s, side="left")
    return (1.0 + n_ge) / (cal.size + 1.0)


def score_threshold(calibration_scores: np.ndarray, alpha: float) -> float:
    """The score t with `score > t` <=> `p <= alpha` (inf when n_cal is too small to ever reach alpha)."""
    cal = np.sort(np.asarray(calibration_scores, dtype=np.float64))[::-1]
    allowed = math.floor(alpha * (cal.size + 1) + 1e-9) - 1  # most calibration scores that may be >= s
    if allowed < 0:
        return math.inf
    if allowed >= cal.size:
        return -math.inf
    return float(cal[allowed])


def calibration_folds(n: int, fraction: float, alpha: float, seed: int) -> tuple[str, list[tuple]]:
    """Plan how to get out-of-sample normal scores.

    Returns ``(method, folds)`` with folds as ``(train_idx, cal_idx)``. "holdout": one split, the model is fitted
    on the train part only. "cross-fit": K folds so every item gets an out-of-fold score (used when a holdout of
    `fraction` would be too small to ever reach `alpha`); the final model is then fitted on all items.
    "none": fewer than 2 items or fraction 0: no calibration possible.
    """
    if fraction <= 0 or n < 2:
        return "none", []
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    n_cal = int(round(n * fraction))
    if n_cal >= math.ceil(1.0 / alpha) - 1 and n - n_cal >= 1:
        return "holdout", [(np.sort(order[n_cal:]), np.sort(order[:n_cal]))]
    k = min(MIN_HOLDOUT_FOLDS, n)
    folds = []
    for part in np.array_split(order, k):
        cal_idx = np.sort(part)
        train_idx = np.sort(np.setdiff1d(order, part))
        folds.append((train_idx, cal_idx))
    return "cross-fit", folds


@dataclass
class Calibration:
    """Held-out normal scores (and optionally pixel-score quantiles) that turn raw scores into decisions."""

    scores: np.ndarray
    method: str = "holdout"
    pixel_fpr_levels: np.ndarray | None = None  # descending upper-tail fractions
    pixel_quantiles: np.ndarray | None = None  # pixel score exceeded by that fraction of normal pixels

    def __post_init__(self) -> None:
        self.scores = np.sort(np.asarray(self.scores, dtype=np.float64))

    @property
    def n(self) -> int:
        return int(self.scores.size)

    def p_values(self, scores: np.ndarray) -> np.ndarray:
        """Conformal p-values (NaN when there is no calibration score)."""
        if self.n == 0:
            return np.full(np.shape(scores), np.nan)
        return conformal_p_values(self.scores, scores)

    def threshold(self, alpha: float) -> float:
        """Score threshold for a target false-alarm rate: flag `score > threshold`."""
        if self.n == 0:
            return math.inf
        return score_threshold(self.scores, check_alpha(alpha))

    def severe_threshold(self) -> float:
        """Scores this far above the normal range are "severe": max + (max - median) of calibration scores."""
        if self.n == 0:
            return math.inf
        top, mid = float(self.scores[-1]), float(np.median(self.scores))
        return top + max(top - mid, 1e-12)

    def severity(self, scores: np.ndarray, alpha: float) -> list[str]:
        """Grade each score: normal (p > 5a), suspicious (a < p <= 5a), anomalous (p <= a), severe (far beyond).

        Monotone in the score for a fixed alpha, and "anomalous"/"severe" exactly when the decision flags it.
        """
        alpha = check_alpha(alpha)
        scores = np.asarray(scores, dtype=np.float64)
        p = self.p_values(scores)
        severe_t = self.severe_threshold()
        grades = []
        for s, pv in zip(scores, p):
            if not np.isfinite(pv) or pv > SUSPICIOUS_FACTOR * alpha:
                grades.append("normal")
            elif pv > alpha:
                grades.append("suspicious")
            elif s >= severe_t:
                grades.append("severe")
            else:
                grades.append("anomalous")
        return grades

    def pixel_threshold(self, pixel_fpr: float) -> float:
        """Map value exceeded by a fraction `pixel_fpr` of normal calibration pixels (inf if unknown)."""
        if self.pixel_quantiles is None or self.pixel_fpr_levels is None:
            return math.inf
        pixel_fpr = check_alpha(pixel_fpr, "pixel_fpr")
        # levels descend (1 -> tiny); interpolate in log space of the level
        lv = np.log(self.pixel_fpr_levels[::-1])
        q = self.pixel_quantiles[::-1]
        return float(np.interp(math.log(pixel_fpr), lv, q))


PIXEL_FPR_GRID = np.logspace(0, -6, 241)  # upper-tail fractions from 1 down to 1e-6


def pixel_quantiles(maps: list[np.ndarray], max_pixels: int = 4_000_000, seed: int = 0) -> np.ndarray:
    """Quantiles of normal map values at the upper-tail fractions of PIXEL_FPR_GRID (subsampled if huge)."""
    flat = np.concatenate([np.asarray(m, dtype=np.float32).ravel() for m in maps])
    if flat.size > max_pixels:
        keep = np.random.default_rng(seed).choice(flat.size, max_pixels, replace=False)
        flat = flat[keep]
    return np.quantile(flat, 1.0 - PIXEL_FPR_GRID).astype(np.float64)
