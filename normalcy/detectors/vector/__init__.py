"""Vector (table-row) detectors: kNN, Mahalanobis, PCA, ECOD, isolation forest, autoencoder, categorical and mixed;
the registry name -> "module:Class" for them (merged into `normalcy.detectors.registry`)."""

from __future__ import annotations

import importlib
from typing import Any

from normalcy.errors import ParameterError

VECTOR_DETECTORS: dict[str, str] = {
    "knn": "normalcy.detectors.vector.knn:KNN",
    "mahalanobis": "normalcy.detectors.vector.mahalanobis:Mahalanobis",
    "pca": "normalcy.detectors.vector.pca:PCA",
    "ecod": "normalcy.detectors.vector.ecod:ECOD",
    "iforest": "normalcy.detectors.vector.iforest:IForest",
    "autoencoder": "normalcy.detectors.vector.autoencoder:AutoEncoder",
    "categorical": "normalcy.detectors.vector.categorical:Categorical",
    "mixed": "normalcy.detectors.vector.mixed:Mixed",
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
