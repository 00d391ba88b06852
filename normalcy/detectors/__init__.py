"""Detectors for every modality on one estimator API (base.py, estimator.py, training.py), by modality in image/,
vector/, text.py and series.py; they import data, features and calibration, never explain or apps.

The registry is an explicit name -> "module:Class" map (no subclass scanning, no import side effects): adding a
detector is one file plus one line here, and the contract tests pick it up.
"""

from __future__ import annotations

import importlib
from typing import Any

from normalcy.errors import ParameterError

IMAGE_DETECTORS: dict[str, str] = {
    "patchcore": "normalcy.detectors.image.patchcore:PatchCore",
    "padim": "normalcy.detectors.image.padim:PaDiM",
    "gaussian": "normalcy.detectors.image.gaussian:GaussianAD",
    "fewshot": "normalcy.detectors.image.fewshot:FewShot",
    "dictionary": "normalcy.detectors.image.dictionary:Dictionary",
    "reference": "normalcy.detectors.image.reference:Reference",
    "musc": "normalcy.detectors.image.musc:MuSc",
    "zeroshot": "normalcy.detectors.image.zeroshot:ZeroShot",
    "inp": "normalcy.detectors.image.inp:INP",
    "simplenet": "normalcy.detectors.image.simplenet:SimpleNet",
    "fastflow": "normalcy.detectors.image.fastflow:FastFlow",
    "efficientad": "normalcy.detectors.image.efficientad:EfficientAD",
    "vae": "normalcy.detectors.image.vae:VAE",
    "semisup": "normalcy.detectors.image.semisup:SemiSupervised",
}
DETECTORS = IMAGE_DETECTORS  # the image registry under its old name
# Image detectors that need the user's own model files (CLIP weights + merges file by local path): registered, but
# kept out of DETECTORS, whose contract tests fit every detector with its defaults (tests/test_clip*.py cover them).
USER_WEIGHTS_DETECTORS: dict[str, str] = {
    "clip": "normalcy.detectors.image.clip_zeroshot:ClipZeroShot",
}
TEXT_SERIES_DETECTORS: dict[str, str] = {
    "text": "normalcy.detectors.text:TextDetector",
    "series": "normalcy.detectors.series:SeriesDetector",
}


def registry() -> dict[str, str]:
    """Every registered detector of every modality: name -> "module:Class"."""
    from normalcy.detectors.vector import VECTOR_DETECTORS
    from normalcy.detectors.video import VIDEO_DETECTORS

    return {**IMAGE_DETECTORS, **USER_WEIGHTS_DETECTORS, **VECTOR_DETECTORS, **TEXT_SERIES_DETECTORS,
            **VIDEO_DETECTORS}


def detector_class(name: str) -> type:
    """The class registered under `name` (imported on first use)."""
    known = registry()
    target = known.get(name)
    if target is None:
        raise ParameterError(f"unknown detector {name!r}; known detectors: {', '.join(sorted(known))}")
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)


def create_detector(name: str, **params: Any):
    """A new, unfitted detector by registry name with keyword parameters."""
    return detector_class(name)(**params)


def __getattr__(attr: str):
    """`normalcy.detectors.PatchCore`, `normalcy.detectors.KNN` etc. without importing every detector up front."""
    if attr.startswith("__"):
        raise AttributeError(attr)
    for target in registry().values():
        module, cls = target.split(":")
        if cls == attr:
            return getattr(importlib.import_module(module), cls)
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")
