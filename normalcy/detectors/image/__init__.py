"""Image detectors (full-shot, trained, few-/zero-shot, semi-supervised) and their shared parts (common.py, bank,
search); they import data, features, calibration and detectors.base, never explain, synth-writers or apps."""

from __future__ import annotations

import importlib
import warnings
from typing import Any


def __getattr__(name: str) -> Any:
    """Names of the old module `normalcy.detectors.image` (now `common.py`), re-exported for one release."""
    common = importlib.import_module("normalcy.detectors.image.common")
    if name.startswith("__") or not hasattr(common, name):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(f"normalcy.detectors.image.{name} moved to normalcy.detectors.image.common.{name}",
                  DeprecationWarning, stacklevel=2)
    return getattr(common, name)
