"""Region embeddings: backbone patch features pooled inside a region, made normal-relative.

Raw features of a defect mostly describe the surface it sits on; what tells defect types apart is how the region
deviates from normal. Two references are supported:

- ``"nearest"`` (PatchCore and any detector with a ``memory_bank_``): each cell's feature minus its nearest normal
  patch in the memory bank — the residual the anomaly score is the length of — averaged over the region.
- ``"background"`` (any image detector): the region's mean feature minus the mean feature of the same image's
  cells outside every region (the image's own normal context).

``"auto"`` uses ``"nearest"`` when a memory bank exists, else ``"background"``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from normalcy.errors import ParameterError
from normalcy.features.preprocess import Placement, canvas_hw, restore_maps

REFERENCES = ("auto", "nearest", "background")
MIN_CELL_COVER = 0.25  # a feature cell joins a region when at least this fraction of it is covered


@dataclass
class ImageFeatures:
    """One image's patch features with what is needed to map image-space masks onto the feature grid."""

    feats: torch.Tensor  # C×h×w
    placement: Placement
    valid: torch.Tensor  # h×w bool
    size: tuple[int, int] | int  # network canvas (height, width); an int is a square


def resolve_reference(detector: Any, reference: str = "auto") -> str:
    """The reference actually used for `detector` ("auto" picks "nearest" when a memory bank exists)."""
    if reference not in REFERENCES:
        raise ParameterError(f"reference must be one of {REFERENCES}, got {reference!r}")
    has_bank = getattr(detector, "memory_bank_", None) is not None
    if reference == "nearest" and not has_bank:
        raise ParameterError(f"reference='nearest' needs a detector with a memory bank (PatchCore), got "
                             f"{type(detector).__name__}; use reference='background'")
    if reference == "auto":
        return "nearest" if has_bank else "background"
    return reference


def scored_features(detector: Any, items: Sequence[Any], alpha: float | None = None,
                    pixel_fpr: float | None = None) -> Iterator[tuple[Any, ImageFeatures]]:
    """(Prediction, ImageFeatures) per item; one backbone pass when the detector scores patch features directly.

    Detectors with their own `_score` (e.g. trained or raw-feature ones) are scored first, then featurized.
    """
    from normalcy.detectors.base import ScoreResult
    from normalcy.detectors.image.common import ImageDetector
    from normalcy.explain.summary import attach_all

    size = detector.canvas
    items = list(items)
    if type(detector)._score is not ImageDetector._score or getattr(detector, "raw_features", False):
        preds = attach_all(detector.predict(items, alpha=alpha, pixel_fpr=pixel_fpr), detector.calibration_)
        k = 0
        for feats, placements, valid in detector.iter_features(items, "features"):
            for j in range(len(placements)):
                yield preds[k], ImageFeatures(feats[j], placements[j], valid[j], size)
                k += 1
        return
    for feats, placements, valid in detector.iter_features(items, "score"):
        scores, patch_maps = detector._score_features(feats, valid)
        maps = restore_maps(patch_maps, placements, size, float(detector.sigma)) if patch_maps is not None else None
        preds = attach_all(detector.decide(ScoreResult(scores.double().numpy(), maps), alpha, pixel_fpr),
                           detector.calibration_)
        for j, pred in enumerate(preds):
            yield pred, ImageFeatures(feats[j], placements[j], valid[j], size)


def grid_cover(mask: np.ndarray, info: ImageFeatures) -> torch.Tensor:
    """Fraction (h×w) of each feature cell covered by an image-space boolean mask."""
    pl = info.placement
    if mask.shape != (pl.height, pl.width):
        raise ParameterError(f"region mask has shape {mask.shape}, the image is {(pl.height, pl.width)}")
    m = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
    if (pl.inner_h, pl.inner_w) != m.shape[-2:]:
        m = F.interpolate(m, size=(pl.inner_h, pl.inner_w), mode="area")
    canvas = torch.zeros(1, 1, *canvas_hw(info.size))
    canvas[..., pl.top : pl.top + pl.inner_h, pl.left : pl.left + pl.inner_w] = m
    return F.adaptive_avg_pool2d(canvas, tuple(info.feats.shape[-2:]))[0, 0] * info.valid


def region_weights(mask: np.ndarray, info: ImageFeatures) -> torch.Tensor:
    """Cell weights of a region: covered fraction where >= MIN_CELL_COVER, else the single best-covered cell."""
    cover = grid_cover(mask, info)
    weights = torch.where(cover >= MIN_CELL_COVER, cover, torch.zeros_like(cover))
    if weights.sum() <= 0:
        weights = torch.zeros_like(cover)
        weights.view(-1)[int(cover.argmax())] = 1.0
    return weights


def _nearest_residuals(detector: Any, cells: torch.Tensor) -> torch.Tensor:
    """Each cell feature (N×C) minus its nearest memory-bank entry."""
    from normalcy.detectors.image.search import nearest_neighbors

    bank = detector.memory_bank_
    index = getattr(detector, "_index", None)
    if index is not None:
        _, idx = index.search(cells)
    else:
        _, idx = nearest_neighbors(cells, bank, 1, getattr(detector, "memory_budget_mb", 256))
    return cells - bank[idx.reshape(-1)]


def embed_regions(detector: Any, info: ImageFeatures, masks: Sequence[np.ndarray],
                  reference: str = "auto") -> np.ndarray:
    """One normal-relative embedding per region mask (R×C float32), see the module docstring."""
    ref = resolve_reference(detector, reference)
    c = info.feats.shape[0]
    if not masks:
        return np.zeros((0, c), dtype=np.float32)
    flat = info.feats.reshape(c, -1).T.float()  # cells × C
    weights = torch.stack([region_weights(m, info).reshape(-1) for m in masks])  # R × cells
    if ref == "nearest":
        used = weights.sum(0) > 0
        resid = torch.zeros_like(flat)
        resid[used] = _nearest_residuals(detector, flat[used])
        pooled = weights @ resid / weights.sum(1, keepdim=True)
    else:
        outside = (weights.sum(0) == 0) & info.valid.reshape(-1)
        context = flat[outside].mean(0) if outside.any() else flat.mean(0)
        pooled = weights @ flat / weights.sum(1, keepdim=True) - context
    return pooled.numpy().astype(np.float32)
