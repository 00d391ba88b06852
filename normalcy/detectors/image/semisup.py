"""Semi-supervised PatchCore: the normal-only NN distance plus a light head trained on a few labelled anomalies.

Positives are patch features inside the labelled masks (or an unmasked image's most distant patches), oversampled
SMOTE-style, plus patches of anomalies synthesized on the fit images (`normalcy.synth.anomalies`); negatives are normal
patches. Both patch scores are z-normalized on normal patches the head never saw and added:
`z(NN distance) + head_weight · z(head logit)`; the image score is the maximum over patches.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np
import torch

from normalcy.detectors.image.common import CachedFeatures, masked_max
from normalcy.detectors.image.patchcore import PatchCore
from normalcy.detectors.image.search import greedy_coreset
from normalcy.detectors.image.semisup_head import Head, mask_to_grid, positive_cells, smote, train_head
from normalcy.errors import MaskMismatchError, ParameterError

HELD_OUT_PATCHES = 4096  # normal patches kept out of the head's training to z-normalize both scores


class SemiSupervised(PatchCore):
    """PatchCore + a supervised patch head; `fit(normal, anomalies=[...], masks=[...])` (masks optional)."""

    name = "semisup"

    def __init__(
        self,
        n_synthetic: int = 24,
        oversample: int = 10,
        head_hidden: int = 32,
        head_epochs: int = 100,
        head_weight: float = 1.0,
        max_negatives: int = 8000,
        backbone: str = "efficientnet_lite0",
        weights: str | Path | None = None,
        image_size: int = 256,
        resize_mode: str = "stretch",
        strides: Sequence[int] = (8, 16),
        aggregate: int = 3,
        project_dim: int | None = None,
        coreset_ratio: float = 0.1,
        coreset_dim: int = 64,
        reweight: bool = False,
        search: str = "auto",
        n_probe: int = 8,
        bank_storage: str = "inline",
        sigma: float = 4.0,
        batch_size: int = 16,
        memory_budget_mb: int = 256,
        alpha: float = 0.05,
        pixel_fpr: float = 0.001,
        calibration_fraction: float = 0.2,
        seed: int = 0,
        progress: bool = True,
    ) -> None:
        super().__init__(
            backbone=backbone, weights=weights, image_size=image_size, resize_mode=resize_mode, strides=strides,
            aggregate=aggregate, project_dim=project_dim, coreset_ratio=coreset_ratio, coreset_dim=coreset_dim,
            reweight=reweight, search=search, n_probe=n_probe, bank_storage=bank_storage, sigma=sigma,
            batch_size=batch_size, memory_budget_mb=memory_budget_mb, alpha=alpha, pixel_fpr=pixel_fpr,
            calibration_fraction=calibration_fraction, seed=seed, progress=progress,
            standardize=False, positional=False,  # the head is fused with the plain nearest-neighbour score
            intensity=None,  # measured without gain normalization; its files (before and after) load alike
        )
        self.n_synthetic = n_synthetic
        self.oversample = oversample
        self.head_hidden = head_hidden
        self.head_epochs = head_epochs
        self.head_weight = head_weight
        self.max_negatives = max_negatives

    # ---- fitting ------------------------------------------------------------------------------------------
    def fit(self, X: Any, y: Any = None, anomalies: Sequence | None = None,
            masks: Sequence[np.ndarray | None] | None = None) -> Self:
        """Fit on normal images `X`, with optional labelled anomalous images and their bool masks (None = no mask)."""
        self._labelled = self._check_labelled(anomalies, masks)
        try:
            super().fit(X, y)
        finally:
            del self._labelled
        self.n_labelled_ = len(anomalies or [])
        return self

    @staticmethod
    def _check_labelled(anomalies: Sequence | None, masks: Sequence | None) -> tuple[list, list]:
        items = list(anomalies or [])
        mlist = list(masks) if masks is not None else [None] * len(items)
        if len(mlist) != len(items):
            raise ParameterError(f"got {len(items)} labelled anomalies but {len(mlist)} masks; pass one per image "
                                 "(None for an image without a mask)")
        return items, [None if m is None else np.asarray(m, dtype=bool) for m in mlist]

    def _fit(self, items: list) -> None:
        if not 0.0 < self.coreset_ratio <= 1.0:
            raise ParameterError(f"coreset_ratio must be in (0, 1], got {self.coreset_ratio}")
        patches = self.collect_patches(items)
        keep = greedy_coreset(patches, self.coreset_ratio, self.coreset_dim, seed=self.seed)
        self._set_bank(patches[keep].contiguous())
        rest = torch.ones(len(patches), dtype=torch.bool)
        rest[keep] = False
        self._fit_head(items, patches, rest)

    def refit_head(self, normal: Sequence, anomalies: Sequence | None = None,
                   masks: Sequence[np.ndarray | None] | None = None) -> Self:
        """Retrain only the head on a fitted detector (memory bank and calibration kept as they are).

        For experiments that vary the labelled set on one normal model; call `fit` for a calibrated model.
        """
        self.check_fitted()
        self._labelled = self._check_labelled(anomalies, masks)
        try:
            items = self._prepare(normal)
            patches = self.collect_patches(items)
            self._fit_head(items, patches, torch.ones(len(patches), dtype=torch.bool))
        finally:
            del self._labelled
        self.n_labelled_ = len(anomalies or [])
        return self

    def _fit_head(self, items: list, patches: torch.Tensor, not_in_bank: torch.Tensor) -> None:
        """Train the head on normal `patches` vs real + synthetic anomalous patches; set the z-score stats."""
        g = torch.Generator().manual_seed(self.seed)
        candidates = torch.nonzero(not_in_bank)[:, 0]
        candidates = candidates[torch.randperm(len(candidates), generator=g)]
        held = patches[candidates[:HELD_OUT_PATCHES]]
        if len(held) < 2:  # tiny fits: every patch is in the bank; use them all (distances then biased low)
            held = patches
        d_held = self._nearest(held)[0][:, 0]
        self.dist_stats_ = torch.tensor([float(d_held.mean()), float(d_held.std().clamp_min(1e-6))])
        free = torch.ones(len(patches), dtype=torch.bool)
        if len(held) < len(patches):
            free[candidates[:HELD_OUT_PATCHES]] = False
        pool = torch.nonzero(free)[:, 0]
        neg = patches[pool[torch.randperm(len(pool), generator=g)[: int(self.max_negatives)]]]
        pos = self._positive_patches(items)
        self.head_ = None
        if len(pos):
            self.head_ = train_head(neg, pos, held, int(self.head_hidden), int(self.head_epochs), seed=self.seed)

    def _positive_patches(self, items: list) -> torch.Tensor:
        """Real labelled positives (+ SMOTE copies) and synthetic positives, as one N×C matrix."""
        anomalies, masks = self._labelled
        real = self._cells(anomalies, masks)
        rows = [real, smote(real, int(self.oversample) * len(real), self.seed)] if len(real) else []
        if int(self.n_synthetic) > 0:
            images, smasks = self._synthesize(items, anomalies, masks)
            rows.append(self._cells(images, smasks))
        rows = [r for r in rows if len(r)]
        return torch.cat(rows) if rows else torch.empty(0)

    def _cells(self, images: list, masks: list) -> torch.Tensor:
        """Features of the anomalous grid cells of `images` (by mask, else the farthest-from-normal cells)."""
        out, start = [], 0
        size = int(self.image_size)
        for feats, placements, valid in self.iter_features(images, "labelled"):
            dist = PatchCore._score_features(self, feats, valid)[1]
            for j, pl in enumerate(placements):
                m = masks[start + j]
                if m is not None and m.shape != (pl.height, pl.width):
                    raise MaskMismatchError(f"mask {start + j} is {m.shape} but its anomalous image is "
                                            f"{(pl.height, pl.width)}")
                cover = None if m is None else mask_to_grid(m, pl, size, tuple(feats.shape[-2:]))
                cells = positive_cells(cover, dist[j], valid[j])
                out.append(feats[j].permute(1, 2, 0)[cells])
            start += len(placements)
        return torch.cat(out) if out else torch.empty(0)

    def _synthesize(self, items: list, anomalies: list, masks: list) -> tuple[list, list]:
        """`n_synthetic` Perlin / cut-paste anomalies on fit images, and transplants of masked labelled ones."""
        from normalcy.data import as_rgb_array
        from normalcy.synth.anomalies import cut_paste, perlin_blend, quantize, transplant

        rng = np.random.default_rng([self.seed, len(items)])
        donors = [(a, m) for a, m in zip(anomalies, masks) if m is not None and m.any()]
        images, out_masks = [], []
        for i in range(int(self.n_synthetic)):
            src = items[int(rng.integers(len(items)))]
            base = as_rgb_array(src.source if isinstance(src, CachedFeatures) else src).astype(np.float32) / 255
            if donors and i % 3 == 2:
                a, m = donors[int(rng.integers(len(donors)))]
                img, mask = transplant(base, as_rgb_array(a).astype(np.float32) / 255, m, rng)
            else:
                other = items[int(rng.integers(len(items)))]
                donor = as_rgb_array(other.source if isinstance(other, CachedFeatures) else other)
                fn = perlin_blend if i % 2 == 0 else cut_paste
                img, mask = fn(base, donor.astype(np.float32) / 255, rng)
            if mask.any():
                images.append(quantize(img))
                out_masks.append(mask)
        return images, out_masks

    # ---- scoring ------------------------------------------------------------------------------------------
    def _score_features(self, feats: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores, dist = super()._score_features(feats, valid)
        if self.head_ is None:
            return scores, dist
        combined = self.combine(dist, feats)
        return masked_max(combined, valid), combined

    def combine(self, dist: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """B×h×w NN distances + B×C×h×w features → z(distance) + head_weight · z(head logit)."""
        b, c, h, w = feats.shape
        z_dist = (dist - self.dist_stats_[0]) / self.dist_stats_[1]
        z_head = self.head_.z(feats.permute(0, 2, 3, 1).reshape(-1, c)).view(b, h, w)
        return z_dist + float(self.head_weight) * z_head

    # ---- persistence --------------------------------------------------------------------------------------
    def _state_arrays(self) -> dict[str, np.ndarray]:
        out = {**super()._state_arrays(), "dist_stats": self.dist_stats_.numpy()}
        if self.head_ is not None:
            out.update(self.head_.arrays())
        return out

    def _state_meta(self) -> dict[str, Any]:
        return {**super()._state_meta(), "n_labelled": int(getattr(self, "n_labelled_", 0))}

    def _load_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        super()._load_state(arrays, meta)
        self.dist_stats_ = torch.from_numpy(np.ascontiguousarray(arrays["dist_stats"], dtype=np.float32))
        self.head_ = Head.from_arrays(arrays) if "head_w1" in arrays else None
        self.n_labelled_ = int(meta.get("n_labelled", 0))
