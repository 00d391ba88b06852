"""Vector (table-row) detectors: an explicit registry name -> "module:Class", created by name."""

from __future__ import annotations

import importlib
from typing import Any

from normalcy.errors import ParameterError

VECTOR_DETECTORS: dict[str, str] = {
    "knn": "normalcy.vector.knn:KNN",
    "mahalanobis": "normalcy.vector.mahalanobis:Mahalanobis",
    "pca": "normalcy.vector.pca:PCA",
    "ecod": "normalcy.vector.ecod:ECOD",
    "iforest": "normalcy.vector.iforest:IForest",
    "autoencoder": "normalcy.vector.autoencoder:AutoEncoder",
    "categorical": "normalcy.vector.categorical:Categorical",
    "mixed": "normalcy.vector.mixed:Mixed",
}

NUMERIC_DETECTORS = ("knn", "mahalanobis", "pca", "ecod", "iforest", "autoencoder")


def vector_detector_class(name: str) -> type:
    """The class registered under `name` (imported on first use)."""
    target = VECTOR_DETECTORS.get(name)
    if target is None:
        raise ParameterError(
            f"unknown vector detector {name!r}; known: {', '.join(sorted(VECTOR_DETECTORS))}"
        )
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)


def create_vector_detector(name: str, **params: Any) -> Any:
    """A new, unfitted vector detector by registry name with keyword parameters."""
    return vector_detector_class(name)(**params)


__all__ = ["VECTOR_DETECTORS", "NUMERIC_DETECTORS", "create_vector_detector", "vector_detector_class"]
