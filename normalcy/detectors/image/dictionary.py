"""Dictionary lookup (cf. DictAS): each query patch rebuilt from its nearest normal reference patches; no training.

The reference patches (augmented views of k normal images) form the dictionary. A query patch is reconstructed
as a softmax-weighted combination of its `neighbors` nearest dictionary entries (weights from the distances,
sharpened by `temperature`); the anomaly score is the reconstruction residual. Normal patches lie close to the
span of their neighbours and are rebuilt well; a defect has no good combination of normal patches.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from normalcy.detectors.image.fewshot import FewShot
from normalcy.errors import ParameterError


class Dictionary(FewShot):
    """Residual of reconstructing each query patch from a softmax-weighted set of nearest reference patches."""

    name = "dictionary"

    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        weights: str | Path | None = None,
        image_size: int = 256,
        resize_mode: str = "stretch",
        aspect: str = "keep",
        strides: Sequence[int] = (8, 16),
        aggregate: int = 1,
        project_dim: int | None = None,
        augment: str = "flip",
        neighbors: int = 8,
        temperature: float = 0.1,
        pad: float = 0.125,
        border: float = 0.0625,
        center: bool = True,
        max_bank: int = 16384,
        sigma: float = 4.0,
        batch_size: int = 8,
        memory_budget_mb: int = 256,
        alpha: float = 0.05,
        pixel_fpr: float = 0.001,
        calibration_fraction: float = 0.2,
        seed: int = 0,
        progress: bool = True,
        transfer_table: str | None = "builtin",
    ) -> None:
        self._store_params(locals())

    def reconstruct(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Q×C queries → (Q×C reconstructions, Q nearest-entry distances)."""
        if int(self.neighbors) < 1 or float(self.temperature) <= 0:
            raise ParameterError(
                f"neighbors must be >= 1 and temperature > 0, got {self.neighbors} and {self.temperature}"
            )
        from normalcy.detectors.image.search import nearest_neighbors

        dist, idx = nearest_neighbors(queries, self.bank_, int(self.neighbors), int(self.memory_budget_mb),
                                      self._bank_sq)
        # distances relative to the nearest one, so the temperature is scale-free (1 = nearest, larger = farther)
        rel = dist / dist[:, :1].clamp(min=1e-6)
        weights = torch.softmax(-(rel - 1.0) / float(self.temperature), dim=1)
        recon = torch.einsum("qk,qkc->qc", weights, self.bank_[idx])
        return recon, dist[:, 0]

    def _score_features(self, feats: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, h, w = feats.shape
        q = feats.permute(0, 2, 3, 1).reshape(-1, c)
        maps = torch.empty(q.shape[0])
        step = 4096  # bounds the Q×k×C gather
        for s in range(0, q.shape[0], step):
            recon, _ = self.reconstruct(q[s : s + step])
            maps[s : s + step] = (q[s : s + step] - recon).norm(dim=1)
        maps = maps.view(b, h, w)
        return self.image_scores(maps, valid), maps
