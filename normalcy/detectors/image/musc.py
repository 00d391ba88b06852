"""Zero-shot mutual scoring of an unlabeled batch (cf. MuSc, ICLR 2024): the other test images are the reference.

Most images of a production batch are normal, so a normal patch finds a close match in most other images while
a defect finds one in few. For every image, each patch's distance to its nearest patch in every other image of
its chunk is computed at several neighbourhood aggregation sizes (`aggregates`); the lowest `lowest_fraction` of
those per-image distances are averaged (a defect repeated in a few images cannot vouch for itself). The image
score is then re-scored as in the paper's RsCIN: the mean, over k = 1..`rescore_neighbors` (3, as the paper uses
on MVTec AD), of the similarity-weighted score of the image's k most similar images, itself included (global
mean features as the image descriptor).

No training data: `fit()` needs nothing (p-values are then NaN); `fit(normal_images)` scores those as one batch
and keeps their scores for calibration. The batch is shuffled (seeded) and split into chunks of about
`chunk_size` images, so memory and per-image cost stay bounded: cost per image grows linearly with `chunk_size`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import torch
import torch.nn.functional as F

from normalcy.detectors.base import Prediction, ScoreResult, take
from normalcy.detectors.image.fewshot import FewShot, aggregate_stages
from normalcy.errors import DataError, ParameterError
from normalcy.features.preprocess import restore_maps


class MuSc(FewShot):
    """Each patch scored by its distances to the nearest patches of the other images in the same batch."""

    name = "musc"
    zero_shot: ClassVar[bool] = True  # fit needs no normal data; score scores its input batch mutually
    min_batch: ClassVar[int] = 2  # a single image has no other image to be compared with
    aggregate: ClassVar[int] = 1  # the extractor runs raw; aggregation happens here at each of `aggregates`

    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        weights: str | Path | None = None,
        image_size: int = 256,
        resize_mode: str = "stretch",
        strides: Sequence[int] = (8, 16),
        aggregates: Sequence[int] = (1, 3, 5),
        lowest_fraction: float = 0.3,
        chunk_size: int = 32,
        rescore_neighbors: int = 3,
        rescore_weight: float = 1.0,
        project_dim: int | None = None,
        pad: float = 0.125,
        border: float = 0.0625,
        center: bool = True,
        sigma: float = 4.0,
        batch_size: int = 8,
        memory_budget_mb: int = 256,
        alpha: float = 0.01,
        pixel_fpr: float = 0.001,
        seed: int = 0,
        progress: bool = True,
    ) -> None:
        self._store_params(locals())

    # ---- fit: nothing to learn; optional calibration batch -------------------------------------------------
    def fit(self, X: Any = None, y: Any = None) -> Self:
        """Zero-shot: nothing is learned. Given normal images, their batch scores become the calibration set."""
        if X is None:
            self._set_calibration("none", [], [])
            self.n_fit_ = 0
            return self
        result = self._score(self._prepare(X))
        self._set_calibration("batch", [result.scores], result.maps or [])
        self.n_fit_ = len(result.scores)
        return self

    def _fit(self, items: list) -> None:  # never called: fit is overridden
        raise NotImplementedError

    # ---- scoring --------------------------------------------------------------------------------------------
    def _check(self, n: int) -> None:
        if n < self.min_batch:
            raise DataError(
                f"MuSc scores images against each other and needs a batch of at least {self.min_batch} images, got "
                f"{n}; score the image together with others from the same product (ideally 16 or more)"
            )
        if not 0.0 < float(self.lowest_fraction) <= 1.0 or int(self.chunk_size) < self.min_batch:
            raise ParameterError(f"lowest_fraction must be in (0, 1] and chunk_size >= {self.min_batch}, got "
                                 f"{self.lowest_fraction}, {self.chunk_size}")
        if not self.aggregates or any(int(a) < 1 or int(a) % 2 == 0 for a in self.aggregates):
            raise ParameterError(f"aggregates must be positive odd sizes, got {self.aggregates!r}")

    def chunks(self, n: int) -> list[np.ndarray]:
        """A seeded shuffle of 0..n-1 split into near-equal chunks of at most `chunk_size` (never below 2)."""
        order = np.random.default_rng(self.seed).permutation(n)
        return np.array_split(order, max(1, math.ceil(n / int(self.chunk_size))))

    def _score(self, items: list) -> ScoreResult:
        n = len(items)
        self._check(n)
        scores = torch.empty(n, dtype=torch.float64)
        desc = [torch.empty(0)] * n
        maps: list[np.ndarray | None] = [None] * n
        for idx in self.chunks(n):
            s, m, g = self._score_chunk(take(items, idx))
            for j, i in enumerate(idx):
                scores[i], maps[i], desc[i] = s[j], m[j], g[j]
        scores = self.rescore(scores, torch.stack(desc))
        return ScoreResult(scores.numpy(), maps)

    def _score_chunk(self, items: list) -> tuple[torch.Tensor, list[np.ndarray], torch.Tensor]:
        """Mutual patch scores of one chunk: (image scores, maps at image size, global descriptors)."""
        stages, placements, valid = [], [], []
        for raw, pl, v in self.iter_features(items, "musc features", raw=True):
            stages.append([f.half() for f in raw])  # half precision keeps a chunk's raw stages small
            placements += pl
            valid.append(v)
        valid_t = torch.cat(valid)
        cells = self._pad_cells()
        total, desc = 0.0, None
        for size in self.aggregates:
            feats = torch.cat([aggregate_stages([f.float() for f in st], int(size), cells) for st in stages])
            if desc is None:
                m = valid_t[:, None].float()
                desc = F.normalize((feats * m).sum((2, 3)) / m.sum((2, 3)).clamp(min=1), dim=1)
            total = total + self.mutual_maps(feats, valid_t)
        patch_maps = total / len(self.aggregates)
        img_scores = self.image_scores(patch_maps, valid_t).double()
        return img_scores, restore_maps(patch_maps, placements, int(self.image_size), float(self.sigma)), desc

    def mutual_maps(self, feats: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """B×h×w: mean of the lowest fraction, over the other images, of each cell's nearest-patch distance."""
        b, c, h, w = feats.shape
        x = feats.permute(0, 2, 3, 1).reshape(b, h * w, c)
        sq = x.pow(2).sum(2)
        far = torch.where(valid.reshape(b, h * w), 0.0, float("inf"))  # invalid cells never match
        keep = max(1, math.ceil(float(self.lowest_fraction) * (b - 1)))
        per_block = max(1, int(self.memory_budget_mb) * 2**20 // (4 * (h * w) ** 2))
        out = torch.empty(b, h * w)
        for i in range(b):
            nearest = torch.empty(h * w, b)
            for j0 in range(0, b, per_block):
                j1 = min(b, j0 + per_block)
                d2 = torch.einsum("pc,jqc->pjq", x[i], x[j0:j1]).mul_(-2.0)
                d2 += sq[i][:, None, None] + (sq[j0:j1] + far[j0:j1])[None]
                nearest[:, j0:j1] = d2.amin(dim=2)
            nearest[:, i] = float("inf")
            low = nearest.clamp_(min=0).sqrt_().topk(keep, dim=1, largest=False).values
            out[i] = low.mean(dim=1)
        return out.view(b, h, w)

    def rescore(self, scores: torch.Tensor, desc: torch.Tensor) -> torch.Tensor:
        """RsCIN: mean over k = 1..`rescore_neighbors` of the similarity-weighted score of the k most similar images.

        The image itself is always among its k most similar (k = 1 keeps the raw score), so a score is pulled
        towards those of its closest look-alikes; `rescore_weight` blends the result with the raw score.
        """
        k_max = min(int(self.rescore_neighbors), len(scores))
        lam = float(self.rescore_weight)
        if not 0.0 <= lam <= 1.0:
            raise ParameterError(f"rescore_weight must be in [0, 1], got {self.rescore_weight}")
        if k_max < 2 or lam == 0.0:
            return scores
        sim = (desc @ desc.T).double().clamp(min=1e-6)  # cosine similarities as weights
        sim.fill_diagonal_(sim.max().item())  # the image itself always ranks first
        top, idx = sim.topk(k_max, dim=1)
        smoothed = ((top * scores[idx]).cumsum(1) / top.cumsum(1)).mean(1)  # column k-1: the k most similar
        return (1.0 - lam) * scores + lam * smoothed

    # ---- predictions score the whole input as one batch -------------------------------------------------
    def predict_iter(
        self, X: Any, alpha: float | None = None, pixel_fpr: float | None = None, chunk: int | None = None
    ) -> Iterator[Prediction]:
        """Predictions in input order; the readable images are scored together (unreadable ones → error rows)."""
        return super().predict_iter(X, alpha, pixel_fpr, chunk or 2**62)

    def _state_arrays(self) -> dict[str, np.ndarray]:
        return {}

    def _load_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        return None
