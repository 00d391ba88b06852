"""Input and parameter checks shared by the vector detectors: one clear message per mistake."""

from __future__ import annotations

from typing import Any

import numpy as np

from normalcy.errors import ParameterError, ShapeError


def _first_bad_cell(mask: np.ndarray) -> tuple[int, int]:
    r, c = np.argwhere(mask)[0]
    return int(r), int(c)


def _numeric(X: np.ndarray, what: str) -> np.ndarray:
    """Convert an object/str array to float64, naming the first column that is not numeric."""
    out = np.empty(X.shape, dtype=np.float64)
    for j in range(X.shape[1]):
        try:
            out[:, j] = X[:, j].astype(np.float64)
        except (TypeError, ValueError):
            bad = next(v for v in X[:, j] if not _is_number(v))
            raise ShapeError(
                f"{what}: column {j} holds non-numeric values (e.g. {bad!r}); use the 'categorical' or "
                "'mixed' detector for categorical columns"
            ) from None
    return out


def _is_number(v: Any) -> bool:
    try:
        float(v)
    except (TypeError, ValueError):
        return False
    return True


def as_matrix(X: Any, what: str = "X") -> np.ndarray:
    """Validate a numeric table and return it as a C-contiguous 2-D float64 array (rows x features)."""
    if hasattr(X, "to_numpy") and not isinstance(X, np.ndarray):  # pandas / polars frames
        X = X.to_numpy()
    try:
        arr = np.asarray(X)
    except ValueError as exc:  # ragged nested lists
        raise ShapeError(f"{what} is ragged (rows of different lengths): {exc}") from None
    if arr.ndim == 1:
        raise ShapeError(
            f"{what} must be 2-D (rows x features), got a 1-D array of shape {arr.shape}; use "
            "X.reshape(-1, 1) for one feature or X.reshape(1, -1) for one row"
        )
    if arr.ndim != 2:
        raise ShapeError(f"{what} must be 2-D (rows x features), got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ShapeError(f"{what} is empty (shape {arr.shape})")
    if arr.dtype.kind in "OUS":
        arr = _numeric(arr, what)
    elif arr.dtype.kind not in "biuf":
        raise ShapeError(f"{what} must be numeric, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    finite = np.isfinite(arr)
    if not finite.all():
        r, c = _first_bad_cell(~finite)
        n_bad = int((~finite).sum())
        raise ShapeError(
            f"{what} contains {n_bad} NaN/inf value(s), first at row {r}, column {c} ({arr[r, c]}); "
            "impute or drop them first"
        )
    return arr


def check_features(X: np.ndarray, n_features: int, who: str) -> None:
    """Raise ShapeError when X has another number of columns than the data the detector was fitted on."""
    if X.shape[1] != n_features:
        raise ShapeError(f"{who} was fitted on {n_features} features but X has {X.shape[1]}")


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    """Validate a string option against its allowed values."""
    if value not in choices:
        raise ParameterError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def check_int(name: str, value: Any, low: int = 1) -> int:
    """Validate an integer parameter >= low (bools rejected)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ParameterError(f"{name} must be an integer >= {low}; got {value!r}")
    return int(value)


def check_float(
    name: str, value: Any, low: float = 0.0, high: float = float("inf"), open_low: bool = True
) -> float:
    """Validate a real parameter in (low, high] (or [low, high] with open_low=False)."""
    ok = isinstance(value, (int, float, np.floating)) and not isinstance(value, bool)
    if ok:
        v = float(value)
        ok = (v > low if open_low else v >= low) and v <= high
    if not ok:
        bracket = "(" if open_low else "["
        raise ParameterError(f"{name} must be a number in {bracket}{low}, {high}]; got {value!r}")
    return float(value)
