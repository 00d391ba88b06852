"""Few-shot detection from k normal references (cf. "Search is All You Need for Few-shot Anomaly Detection").

Each query patch is scored by its distance to the nearest patch of k normal reference images, whose bank is
enlarged with flipped/rotated views of the references. Features are the backbone's stride-8 and stride-16 stages
(multi-stage, locally aggregated) computed on a reflect-padded canvas, so cells at the image border carry no
zero-padding artefacts. The image score ignores a thin border band (the classic 224-of-256 centre crop).

Calibration: with k = 1 no normal image is left to calibrate on, so p-values are NaN and nothing is flagged (the
base class warns); with k >= 2 the references are cross-fitted (each scored by a model of the others), and the
smallest reachable p-value is 1/(k+1).

This module also holds what the other few-shot and zero-shot detectors share: views, padded features, reference
sampling and the image-score border rule.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from normalcy.detectors.image.common import CachedFeatures, ImageDetector, masked_max
from normalcy.detectors.image.search import greedy_coreset, nearest_neighbors
from normalcy.errors import ParameterError
from normalcy.features.extractor import PaddedExtractor, pad_cells
from normalcy.features.preprocess import prepare_batch, valid_grid

AUGMENTS = ("none", "flip", "dihedral")


def sample_references(items: Sequence, shots: int, seed: int = 0) -> list:
    """`shots` items drawn without replacement with a seeded generator (ParameterError if too few)."""
    if not isinstance(shots, (int, np.integer)) or isinstance(shots, bool) or shots < 1:
        raise ParameterError(f"shots must be a positive integer, got {shots!r}")
    if shots > len(items):
        raise ParameterError(f"asked for {shots} reference images but only {len(items)} normal images are available")
    idx = np.sort(np.random.default_rng(seed).choice(len(items), int(shots), replace=False))
    return [items[int(i)] for i in idx]


def views(x: torch.Tensor, augment: str) -> torch.Tensor:
    """Stack the flip/rotation views of a B×…×S×S batch (view-major): 1, 4 or 8 views per image."""
    if augment not in AUGMENTS:
        raise ParameterError(f"augment must be one of {AUGMENTS}, got {augment!r}")
    out = [x]
    if augment in ("flip", "dihedral"):
        out += [x.flip(-1), x.flip(-2), x.flip(-1).flip(-2)]
    if augment == "dihedral":
        t = x.transpose(-1, -2)
        out += [t, t.flip(-1), t.flip(-2), t.flip(-1).flip(-2)]
    return torch.cat(out)


def aggregate_stages(stages: Sequence[torch.Tensor], size: int, crop: int = 0) -> torch.Tensor:
    """Average each stage over a `size`×`size` neighbourhood, upsample to the finest grid, concatenate, crop."""
    target = stages[0].shape[-2:]
    parts = []
    for f in stages:
        if size > 1:
            p = size // 2
            f = F.avg_pool2d(F.pad(f, (p, p, p, p), mode="replicate"), size, stride=1)
        if f.shape[-2:] != target:
            f = F.interpolate(f, size=target, mode="bilinear", align_corners=False)
        parts.append(f)
    feats = torch.cat(parts, dim=1)
    return feats[..., crop : feats.shape[-2] - crop, crop : feats.shape[-1] - crop].contiguous()


class FewShot(ImageDetector):
    """Nearest-neighbour distance of each query patch to the augmented patches of k normal references."""

    name = "fewshot"
    min_fit_items = 1

    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        weights: str | Path | None = None,
        image_size: int = 256,
        resize_mode: str = "stretch",
        strides: Sequence[int] = (8, 16),
        aggregate: int = 1,
        project_dim: int | None = None,
        augment: str = "flip",
        pad: float = 0.125,
        border: float = 0.0625,
        center: bool = True,
        max_bank: int = 16384,
        sigma: float = 4.0,
        batch_size: int = 8,
        memory_budget_mb: int = 256,
        alpha: float = 0.01,
        pixel_fpr: float = 0.001,
        calibration_fraction: float = 0.2,
        seed: int = 0,
        progress: bool = True,
    ) -> None:
        self._store_params(locals())

    def _store_params(self, values: dict[str, Any]) -> None:
        """sklearn rule: every `__init__` argument stored as-is under its own name."""
        for name in self._param_names():
            setattr(self, name, values[name])

    # ---- features ---------------------------------------------------------------------------------------
    def _padded(self) -> PaddedExtractor:
        """The extractor on a canvas reflect-padded by `pad` of the image size (whole cells of the finest stride)."""
        stride = min(self.strides)
        return PaddedExtractor(self.extractor, pad_cells(self.pad, int(self.image_size), stride), stride)

    def _pad_cells(self) -> int:
        """Reflect padding added around the canvas, in cells of the finest stride."""
        return self._padded().cells

    def _features(self, x: torch.Tensor, raw: bool = False) -> Any:
        """Patch features (or the padded canvas's raw stages) of a B×3×S×S batch, on a reflect-padded canvas."""
        padded = self._padded()
        return padded.backbone_only(padded.pad(x)) if raw else padded(x)

    def iter_features(
        self, items: list, desc: str = "features", raw: bool = False, augment: str = "none"
    ) -> Iterator[tuple[Any, list, torch.Tensor]]:
        """Yield (features, placements, valid cells) per batch; `augment` stacks flip/rotation views."""
        from normalcy.data import as_rgb_array

        size = int(self.image_size)
        grid = (-(-size // min(self.strides)),) * 2
        bar = tqdm(total=len(items), desc=desc, unit="img", disable=not self.progress, leave=False)
        try:
            for start in range(0, len(items), int(self.batch_size)):
                chunk = items[start : start + int(self.batch_size)]
                chunk = [getattr(c, "source", c) if isinstance(c, CachedFeatures) else c for c in chunk]
                x, placements = prepare_batch([as_rgb_array(a) for a in chunk], size, self.resize_mode)
                valid = valid_grid(placements, size, grid)
                if augment != "none":
                    x, valid = views(x, augment), views(valid, augment)
                yield self._features(x, raw), placements, valid
                bar.update(len(chunk))
        finally:
            bar.close()

    def _cache_features(self, items: list) -> list:
        """No feature cache across folds: references are augmented in pixel space, so folds re-extract."""
        return items

    def reference_features(self, items: list) -> tuple[torch.Tensor, torch.Tensor]:
        """Features (V×C×h×w) and valid cells (V×h×w) of every augmented view of the references."""
        feats, valid = [], []
        for f, _, v in self.iter_features(items, "references", augment=self.augment):
            feats.append(f)
            valid.append(v)
        return torch.cat(feats), torch.cat(valid)

    def image_scores(self, maps: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Max over the scored cells, minus the image's median cell score when `center` (a global offset)."""
        scores = masked_max(maps, self.score_cells(valid))
        if self.center:
            flat = maps.masked_fill(~valid, float("nan")).flatten(1)
            scores = scores - flat.nanmedian(dim=1).values
        return scores

    # ---- fit / score --------------------------------------------------------------------------------------
    def _fit(self, items: list) -> None:
        feats, valid = self.reference_features(items)
        self._set_bank(feats.permute(0, 2, 3, 1)[valid])

    def _set_bank(self, patches: torch.Tensor) -> None:
        """Keep the patches (greedy coreset down to `max_bank` rows when there are more)."""
        if int(self.max_bank) < 1:
            raise ParameterError(f"max_bank must be a positive integer, got {self.max_bank}")
        if patches.shape[0] > int(self.max_bank):
            keep = greedy_coreset(patches, int(self.max_bank) / patches.shape[0], seed=self.seed)
            patches = patches[keep]
        self.bank_ = patches.contiguous()
        self._bank_sq = self.bank_.pow(2).sum(1)

    def nearest(self, feats: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Distances and indices (B·h·w × k) of each cell's k nearest bank patches."""
        c = feats.shape[1]
        return nearest_neighbors(feats.permute(0, 2, 3, 1).reshape(-1, c), self.bank_, k,
                                 int(self.memory_budget_mb), self._bank_sq)

    def _score_features(self, feats: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, _, h, w = feats.shape
        maps = self.nearest(feats)[0][:, 0].view(b, h, w)
        return self.image_scores(maps, valid), maps

    # ---- persistence --------------------------------------------------------------------------------------
    def _state_arrays(self) -> dict[str, np.ndarray]:
        return {"bank": self.bank_.numpy()}

    def _load_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.bank_ = torch.from_numpy(np.ascontiguousarray(arrays["bank"], dtype=np.float32))
        self._bank_sq = self.bank_.pow(2).sum(1)
