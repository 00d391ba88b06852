"""Detector registry: an explicit name → "module:Class" map (no subclass scanning, no import side effects)."""

from __future__ import annotations

import importlib
from typing import Any

from normalcy.errors import ParameterError

DETECTORS: dict[str, str] = {
    "patchcore": "normalcy.detectors.patchcore:PatchCore",
    "padim": "normalcy.detectors.padim:PaDiM",
    "gaussian": "normalcy.detectors.gaussian:GaussianAD",
    "fewshot": "normalcy.detectors.fewshot:FewShot",
    "dictionary": "normalcy.detectors.dictionary:Dictionary",
    "reference": "normalcy.detectors.reference:Reference",
    "musc": "normalcy.detectors.musc:MuSc",
    "inp": "normalcy.detectors.inp:INP",
    "simplenet": "normalcy.detectors.simplenet:SimpleNet",
    "fastflow": "normalcy.detectors.fastflow:FastFlow",
    "efficientad": "normalcy.detectors.efficientad:EfficientAD",
    "vae": "normalcy.detectors.vae:VAE",
    "semisup": "normalcy.detectors.semisup:SemiSupervised",
}


def detector_class(name: str) -> type:
    """The class registered under `name` (imported on first use)."""
    target = DETECTORS.get(name) or _vector_target(name)
    if target is None:
        known = sorted(DETECTORS) + sorted(_vector_registry())
        raise ParameterError(f"unknown detector {name!r}; known detectors: {', '.join(known)}")
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)


def create_detector(name: str, **params: Any):
    """A new, unfitted detector by registry name with keyword parameters."""
    return detector_class(name)(**params)


def _vector_registry() -> dict[str, str]:
    try:
        from normalcy.vector import VECTOR_DETECTORS
    except ImportError:
        return {}
    return dict(VECTOR_DETECTORS)


def _vector_target(name: str) -> str | None:
    return _vector_registry().get(name)


def __getattr__(attr: str):
    """`normalcy.detectors.PatchCore` etc. without importing every detector up front."""
    for target in DETECTORS.values():
        module, cls = target.split(":")
        if cls == attr:
            return getattr(importlib.import_module(module), cls)
    raise AttributeError(attr)
