"""Do scores order anomalies by severity? Spearman correlation against a `severity.csv` beside the test folder.

Format: `<category>/severity.csv` with a header `path,severity`; `path` is relative to the category folder (or
absolute), `severity` a number (higher = more severe; `normalcy synth --severity-levels L` writes levels 1..L).
Only the listed test images take part; list normal images with severity 0 to include them.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from normalcy.errors import DataError

SEVERITY_FILE = "severity.csv"


def rank(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties given their average rank."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values))
    sorted_vals = values[order]
    start = 0
    for end in range(1, len(values) + 1):
        if end == len(values) or sorted_vals[end] != sorted_vals[start]:
            ranks[order[start:end]] = (start + end + 1) / 2.0
            start = end
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Spearman's rho and its two-sided p-value (t approximation, n − 2 degrees of freedom); NaN if undefined."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise DataError(f"spearman needs two equal-length 1-D arrays, got shapes {x.shape} and {y.shape}")
    if len(x) < 3:
        return float("nan"), float("nan")
    rx, ry = rank(x) - (len(x) + 1) / 2.0, rank(y) - (len(y) + 1) / 2.0
    denom = np.sqrt((rx * rx).sum() * (ry * ry).sum())
    if denom == 0:
        return float("nan"), float("nan")
    rho = float(np.clip((rx * ry).sum() / denom, -1.0, 1.0))
    if abs(rho) == 1.0:
        return rho, 0.0
    t = rho * np.sqrt((len(x) - 2) / (1.0 - rho * rho))
    return rho, float(2.0 * stats.t.sf(abs(t), len(x) - 2))


def _key(path: str | Path) -> str:
    """A comparable absolute path that does not follow symlinks (synth links its normal images)."""
    return os.path.normpath(os.path.abspath(path))


def read_severity(category: str | Path) -> dict[str, float] | None:
    """Absolute image path → severity from `<category>/severity.csv`, or None when the file is absent."""
    path = Path(category) / SEVERITY_FILE
    if not path.is_file():
        return None
    out = {}
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"path", "severity"} <= set(reader.fieldnames):
            raise DataError(f"{path} must have a header with the columns path,severity (got {reader.fieldnames})")
        for line, row in enumerate(reader, start=2):
            try:
                level = float(row["severity"])
            except (TypeError, ValueError):
                raise DataError(f"{path}, line {line}: severity {row['severity']!r} is not a number") from None
            p = Path(row["path"])
            out[_key(p if p.is_absolute() else Path(category) / p)] = level
    return out


def severity_fields(category: str | Path, samples: Sequence, scores: np.ndarray,
                    p_values: np.ndarray | None = None) -> dict[str, Any]:
    """Bench-row fields: Spearman of severity vs score (rho, its p-value, n) and vs the conformal p-value."""
    levels = read_severity(category)
    if levels is None:
        return {}
    idx = [i for i, s in enumerate(samples) if _key(getattr(s, "path", s)) in levels]
    if not idx:
        raise DataError(f"{Path(category) / SEVERITY_FILE} lists no image of the test set (paths are relative to "
                        f"{category})")
    sev = np.array([levels[_key(getattr(samples[i], "path", samples[i]))] for i in idx])
    rho, p = spearman(sev, np.asarray(scores, dtype=np.float64)[idx])
    out = {"severity_spearman": rho, "severity_spearman_pvalue": p, "severity_n": len(idx)}
    if p_values is not None:  # sign flipped: like the score, +1 means "more severe → smaller p-value"
        rho_p, p_p = spearman(sev, -np.asarray(p_values, dtype=np.float64)[idx])
        out.update(severity_spearman_conformal=rho_p, severity_spearman_conformal_pvalue=p_p)
    return out
