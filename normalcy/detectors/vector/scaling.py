"""Per-feature scaling learned on fit data only, so distances do not depend on the units of each column."""

from __future__ import annotations

import numpy as np

from normalcy.detectors.vector.checks import check_choice

SCALINGS = ("robust", "standard", "minmax", "none")
_IQR_TO_STD = 1.349  # IQR of a standard normal: makes robust scales comparable to standard deviations


def _magnitude(X: np.ndarray) -> np.ndarray:
    """Per-column largest |value| (1 for all-zero columns): statistics are computed on X / magnitude, so values
    near the float64 limits (1e-300 or 1e300) neither underflow nor overflow when squared or subtracted."""
    top = np.abs(X).max(axis=0)
    return np.where(top > 0, top, 1.0)


def fit_scaling(X: np.ndarray, method: str = "robust") -> tuple[np.ndarray, np.ndarray]:
    """Return (center, scale) per column; zero spreads fall back to the std, then to 1 (constant columns).

    A spread counts as zero only relative to the column's own magnitude, so a feature measured in tiny units
    (all values ~1e-200, or spanning 1e-9) keeps its spread instead of being flattened.
    """
    check_choice("scaling", method, SCALINGS)
    d = X.shape[1]
    if method == "none":
        return np.zeros(d), np.ones(d)
    mag = _magnitude(X)
    U = X / mag
    std = U.std(axis=0)
    if method == "robust":
        q25, center, q75 = np.percentile(U, [25, 50, 75], axis=0)
        scale = (q75 - q25) / _IQR_TO_STD
        scale = np.where(scale > 1e-12 * np.abs(center), scale, std)
    elif method == "standard":
        center, scale = U.mean(axis=0), std
    else:
        lo, hi = U.min(axis=0), U.max(axis=0)
        center, scale = lo, hi - lo
    scale = np.where(scale > 1e-12 * np.abs(center), scale, 0.0)
    with np.errstate(over="ignore"):
        scale = np.minimum(scale * mag, np.finfo(np.float64).max)
    scale = np.where(scale > 0, scale, 1.0)  # constant column: distances along it are 0 either way
    return np.asarray(center * mag, dtype=np.float64), np.asarray(scale, dtype=np.float64)


def apply_scaling(X: np.ndarray, center: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """(X - center) / scale as a new float64 array (computed as X/scale - center/scale where X - center overflows)."""
    with np.errstate(over="ignore", invalid="ignore"):
        out = (X - center) / scale
        bad = ~np.isfinite(out)
        if bad.any():
            alt = X / scale - center / scale
            out[bad] = alt[bad]
    return out
