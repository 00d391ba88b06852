"""PatchCore (Roth et al., 2022): a coreset memory bank of normal patch features; score = NN distance."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from normalcy.detectors.image import ImageDetector, masked_max
from normalcy.detectors.search import greedy_coreset, nearest_neighbors
from normalcy.errors import ParameterError


class PatchCore(ImageDetector):
    """Nearest-neighbour distance of each test patch to a greedy-coreset memory bank of normal patches."""

    name = "patchcore"

    def __init__(
        self,
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
        sigma: float = 4.0,
        batch_size: int = 16,
        memory_budget_mb: int = 256,
        alpha: float = 0.01,
        pixel_fpr: float = 0.001,
        calibration_fraction: float = 0.2,
        seed: int = 0,
        progress: bool = True,
    ) -> None:
        self.backbone = backbone
        self.weights = weights
        self.image_size = image_size
        self.resize_mode = resize_mode
        self.strides = strides
        self.aggregate = aggregate
        self.project_dim = project_dim
        self.coreset_ratio = coreset_ratio
        self.coreset_dim = coreset_dim
        self.reweight = reweight
        self.sigma = sigma
        self.batch_size = batch_size
        self.memory_budget_mb = memory_budget_mb
        self.alpha = alpha
        self.pixel_fpr = pixel_fpr
        self.calibration_fraction = calibration_fraction
        self.seed = seed
        self.progress = progress

    def _fit(self, items: list) -> None:
        if not 0.0 < self.coreset_ratio <= 1.0:
            raise ParameterError(f"coreset_ratio must be in (0, 1], got {self.coreset_ratio}")
        patches = self.collect_patches(items)
        keep = greedy_coreset(patches, self.coreset_ratio, self.coreset_dim, seed=self.seed)
        self.memory_bank_ = patches[keep].contiguous()
        self._bank_sq = self.memory_bank_.pow(2).sum(1)

    def _score_features(self, feats: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, h, w = feats.shape
        q = feats.permute(0, 2, 3, 1).reshape(-1, c)
        dist, idx = nearest_neighbors(q, self.memory_bank_, 1, self.memory_budget_mb, self._bank_sq)
        maps = dist[:, 0].view(b, h, w)
        scores = masked_max(maps, valid)
        if self.reweight:
            scores = self._reweighted(feats, maps, idx[:, 0].view(b, h, w), valid, scores)
        return scores, maps

    def _reweighted(self, feats, maps, nn_idx, valid, scores, neighbours: int = 3) -> torch.Tensor:
        """PatchCore eq. 7: damp the max-patch score when its nearest bank entry sits in a dense region."""
        b, c = feats.shape[:2]
        flat = maps.masked_fill(~valid, float("-inf")).flatten(1).argmax(1)
        q_star = feats.flatten(2)[torch.arange(b), :, flat]  # B×C
        m_star = self.memory_bank_[nn_idx.flatten(1)[torch.arange(b), flat]]  # B×C
        _, nb = nearest_neighbors(m_star, self.memory_bank_, neighbours, self.memory_budget_mb, self._bank_sq)
        d_nb = torch.cdist(q_star[:, None], self.memory_bank_[nb])[:, 0]  # B×k (first = m* itself)
        weight = 1.0 - torch.softmax(d_nb, dim=1)[:, 0]  # eq. 7 (softmax = its stable form)
        return weight * scores

    # ---- persistence --------------------------------------------------------------------------------------
    def _state_arrays(self) -> dict[str, np.ndarray]:
        return {"memory_bank": self.memory_bank_.numpy()}

    def _load_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.memory_bank_ = torch.from_numpy(np.ascontiguousarray(arrays["memory_bank"], dtype=np.float32))
        self._bank_sq = self.memory_bank_.pow(2).sum(1)
