"""Public entry points, re-exported by `normalcy/__init__.py`."""

from __future__ import annotations

from normalcy.detectors import create_detector, detector_class
from normalcy.detectors.base import Detector, Prediction, ScoreResult
from normalcy.detectors.gaussian import GaussianAD
from normalcy.detectors.padim import PaDiM
from normalcy.detectors.patchcore import PatchCore
from normalcy.store import load

__all__ = [
    "Detector",
    "GaussianAD",
    "PaDiM",
    "PatchCore",
    "Prediction",
    "ScoreResult",
    "create_detector",
    "detector_class",
    "load",
]
