"""Intrinsic normal prototypes (cf. INP-Former): normality taken from the test image itself.

Each image's patches are clustered by a few seeded k-means iterations into `prototypes` centres; centres that
hold at least `min_mass` of the image's patches are its normal prototypes (a small defect cannot own one). A
patch's intrinsic score is its distance to the nearest prototype: what the image itself does not repeat. It is
blended with the distance to a fitted bank of normal reference patches (`bank_weight`; 0 = the image alone).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from normalcy.detectors.image.fewshot import FewShot
from normalcy.detectors.image.search import kmeans
from normalcy.errors import ParameterError


def kmeans_prototypes(
    x: torch.Tensor, valid: torch.Tensor, k: int, iterations: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means of each image's valid patches (B×P×C, valid B×P): B×k centres and their mass (fraction of patches),
    with the project's one k-means (normalcy.detectors.image.search.kmeans)."""
    k = max(1, min(k, int(valid.sum(1).min())))
    centres, mass = [], []
    for xi, vi in zip(x, valid):
        points = xi[vi]
        c, assign = kmeans(points, k, iters=max(1, iterations), seed=seed)
        centres.append(c)
        mass.append(torch.bincount(assign, minlength=k).float() / max(len(points), 1))
    return torch.stack(centres), torch.stack(mass)


class INP(FewShot):
    """Distance to the image's own dominant k-means prototypes, blended with the distance to normal references."""

    name = "inp"

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
        prototypes: int = 16,
        iterations: int = 5,
        min_mass: float = 0.03,
        bank_weight: float = 0.5,
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

    def intrinsic_maps(self, feats: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """B×h×w distance of every cell to the nearest of its own image's normal prototypes."""
        if int(self.prototypes) < 1 or not 0.0 <= float(self.min_mass) < 1.0:
            raise ParameterError(f"prototypes must be >= 1 and min_mass in [0, 1), got {self.prototypes}, "
                                 f"{self.min_mass}")
        b, c, h, w = feats.shape
        x = feats.permute(0, 2, 3, 1).reshape(b, h * w, c)
        flat_valid = valid.reshape(b, h * w)
        centres, mass = kmeans_prototypes(x, flat_valid, int(self.prototypes), int(self.iterations), self.seed)
        keep = mass >= float(self.min_mass)
        keep[mass.argmax(dim=1)[:, None] == torch.arange(mass.shape[1])] = True  # the largest always counts
        d = torch.cdist(x, centres).masked_fill(~keep[:, None, :], float("inf"))
        return d.min(dim=2).values.view(b, h, w)

    def _score_features(self, feats: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bw = float(self.bank_weight)
        if not 0.0 <= bw <= 1.0:
            raise ParameterError(f"bank_weight must be in [0, 1], got {self.bank_weight}")
        b, _, h, w = feats.shape
        maps = self.intrinsic_maps(feats, valid)
        if bw > 0:
            maps = (1.0 - bw) * maps + bw * self.nearest(feats)[0][:, 0].view(b, h, w)
        return self.image_scores(maps, valid), maps
