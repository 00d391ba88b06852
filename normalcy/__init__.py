"""normalcy: learn what normal looks like; flag, localize and explain what is not.

Library rooms (each may import only the rooms listed before it): errors → data, features → synth, calibration →
detectors (image, vector, text, series) → metrics, store → explain. Entry points (CLI, service, bench, export, demo,
distributed runs) live in `normalcy.apps`, which the library never imports. The top level is imported lazily so
`normalcy --help` starts without torch.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import os
import sys
import warnings
from typing import Any

# Idle OpenMP threads sleep instead of spinning: on a busy 2-core machine spinning made torch up to 100x slower
# (measured); set OMP_WAIT_POLICY yourself before importing torch to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

# Public names -> "module:attribute", imported on first use (PEP 562).
_PUBLIC = {
    "Detector": "normalcy.detectors.base:Detector",
    "Prediction": "normalcy.detectors.base:Prediction",
    "ScoreResult": "normalcy.detectors.base:ScoreResult",
    "GaussianAD": "normalcy.detectors.image.gaussian:GaussianAD",
    "PaDiM": "normalcy.detectors.image.padim:PaDiM",
    "PatchCore": "normalcy.detectors.image.patchcore:PatchCore",
    "create_detector": "normalcy.detectors:create_detector",
    "detector_class": "normalcy.detectors:detector_class",
    "load": "normalcy.store:load",
}
_SUBMODULES = {"data", "metrics", "detectors", "features", "calibration", "explain", "synth", "store", "errors"}

__all__ = ["__version__", "data", "metrics", *_PUBLIC]


def __getattr__(name: str) -> Any:
    """Import public names and submodules on first use, so importing the package stays cheap."""
    if name in _PUBLIC:
        module, attr = _PUBLIC[name].split(":")
        value = getattr(importlib.import_module(module), attr)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC) | _SUBMODULES)


# ---- old import paths (before the 0.2 layout) keep working for one release, with a DeprecationWarning ----------
_MOVED = {
    "api": "normalcy", "estimator": "normalcy.detectors.estimator", "train": "normalcy.detectors.training",
    "calibrate": "normalcy.calibration.conformal", "severity": "normalcy.calibration.severity",
    "detectors.image": "normalcy.detectors.image.common", "semisup_head": "normalcy.detectors.image.semisup_head",
    "vector.tables": "normalcy.data.tables", "vector.minilm": "normalcy.features.minilm",
    "vector": "normalcy.detectors.vector", "text": "normalcy.detectors.text", "series": "normalcy.detectors.series",
    "visualize": "normalcy.explain.overlay", "synth_noise": "normalcy.synth.noise",
    "synth_io": "normalcy.synth.folders",
    "cli": "normalcy.apps.cli", "demo": "normalcy.apps.demo", "distributed": "normalcy.apps.distributed",
    "predict_io": "normalcy.apps.results", "serve": "normalcy.apps.serve", "bench": "normalcy.apps.bench",
    "export": "normalcy.apps.export",
    **{m: f"normalcy.explain.{m}" for m in (
        "regions", "region_features", "gallery", "narrator", "clustering", "discover", "contact_sheet")},
    **{f"detectors.{m}": f"normalcy.detectors.image.{m}" for m in (
        "patchcore", "padim", "gaussian", "bank", "search", "faiss_index", "fewshot", "dictionary", "reference",
        "musc", "inp", "simplenet", "fastflow", "efficientad", "vae", "semisup")},
}
# Packages whose submodules moved with them (old `normalcy.vector.knn` -> `normalcy.detectors.vector.knn`).
_MOVED_PACKAGES = ("vector", "serve", "bench", "export")


def _new_name(fullname: str) -> str | None:
    """The new module path of an old `normalcy.*` import path, or None if it did not move."""
    if not fullname.startswith(__name__ + "."):
        return None
    old = fullname[len(__name__) + 1:]
    if old == "detectors.image":  # now a package; the old module `detectors/image.py` became image/common.py
        return None
    if old in _MOVED:
        return _MOVED[old]
    head, _, rest = old.partition(".")
    if head in _MOVED_PACKAGES and rest:
        return f"{_MOVED[head]}.{rest}"
    return None


class _MovedModuleLoader(importlib.abc.Loader):
    """Hands out the module at its new path under the old name, once, with a DeprecationWarning."""

    def __init__(self, new: str) -> None:
        self.new = new

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Any:
        warnings.warn(f"{spec.name} moved to {self.new}; the old path will be removed in the next release",
                      DeprecationWarning, stacklevel=2)
        module = importlib.import_module(self.new)
        self.spec = module.__spec__
        return module

    def exec_module(self, module: Any) -> None:
        """Nothing to run (imported under its new name); give the module back its own spec."""
        module.__spec__ = self.spec


class _MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Maps old import paths to the new layout (a thin re-export, not a copy)."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        new = _new_name(fullname)
        if new is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _MovedModuleLoader(new))


if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):
    sys.meta_path.insert(0, _MovedModuleFinder())
