"""PatchCore (Roth et al., 2022): a coreset memory bank of normal patch features; score = NN distance."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from normalcy.detectors.image import ImageDetector, masked_max
from normalcy.detectors.search import IVFIndex, greedy_coreset, nearest_neighbors
from normalcy.errors import ParameterError

EXACT_SEARCH_MAX = 16384  # banks up to this size are searched exactly with search="auto"


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
        search: str = "auto",
        n_probe: int = 8,
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
        self.search = search
        self.n_probe = n_probe
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
        self._set_bank(patches[keep].contiguous())

    def _set_bank(self, bank: torch.Tensor, centroids=None, assign=None) -> None:
        """Install the memory bank and, for large banks (or search="ivf"), its approximate index."""
        if self.search not in ("auto", "exact", "ivf"):
            raise ParameterError(f"search must be 'auto', 'exact' or 'ivf', got {self.search!r}")
        self.memory_bank_ = bank
        self._bank_sq = bank.pow(2).sum(1)
        use_ivf = self.search == "ivf" or (self.search == "auto" and bank.shape[0] > EXACT_SEARCH_MAX)
        self._index = IVFIndex(bank, n_probe=self.n_probe, seed=self.seed, centroids=centroids,
                               assign=assign) if use_ivf else None

    def _score_features(self, feats: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, h, w = feats.shape
        q = feats.permute(0, 2, 3, 1).reshape(-1, c)
        if self._index is not None:
            dist, idx = self._index.search(q)
            dist, idx = dist[:, None], idx[:, None]
        else:
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
        out = {"memory_bank": self.memory_bank_.numpy()}
        if self._index is not None:
            out["ivf_centroids"] = self._index.centroids.numpy()
            out["ivf_assign"] = self._index.assign.numpy()
        return out

    def _load_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        bank = torch.from_numpy(np.ascontiguousarray(arrays["memory_bank"], dtype=np.float32))
        cent = arrays.get("ivf_centroids")
        assign = arrays.get("ivf_assign")
        self._set_bank(bank, None if cent is None else torch.from_numpy(np.ascontiguousarray(cent)),
                       None if assign is None else torch.from_numpy(np.ascontiguousarray(assign)))
