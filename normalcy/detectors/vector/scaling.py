"""Per-feature scaling learned on fit data only, so distances do not depend on the units of each column."""

from __future__ import annotations

import numpy as np

from normalcy.detectors.vector.checks import check_choice

SCALINGS = ("robust", "standard", "minmax", "none")
_IQR_TO_STD = 1.349  # IQR of a standard normal: makes robust scales comparable to standard deviations


def fit_scaling(X: np.ndarray, method: str = "robust") -> tuple[np.ndarray, np.ndarray]:
    """Return (center, scale) per column; zero spreads fall back to the std, then to 1 (constant columns)."""
    check_choice("scaling", method, SCALINGS)
    d = X.shape[1]
    if method == "none":
        return np.zeros(d), np.ones(d)
    std = X.std(axis=0)
    if method == "robust":
        q25, center, q75 = np.percentile(X, [25, 50, 75], axis=0)
        scale = (q75 - q25) / _IQR_TO_STD
        scale = np.where(scale > 1e-12 * (1 + np.abs(center)), scale, std)
    elif method == "standard":
        center, scale = X.mean(axis=0), std
    else:
        lo, hi = X.min(axis=0), X.max(axis=0)
        center, scale = lo, hi - lo
    scale = np.where(scale > 1e-12 * (1 + np.abs(center)), scale, 1.0)
    return np.asarray(center, dtype=np.float64), np.asarray(scale, dtype=np.float64)


def apply_scaling(X: np.ndarray, center: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """(X - center) / scale as a new float64 array."""
    return (X - center) / scale
