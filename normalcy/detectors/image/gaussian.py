"""Gaussian-AD (Rippel et al., 2020): one multivariate Gaussian per backbone stage on pooled features.

Image-level only: it returns no anomaly map (pooling removes where the anomaly is), which is what the method
is — fast, tiny, and a strong baseline for whole-image anomalies.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.covariance import ledoit_wolf

from normalcy.detectors.base import ScoreResult
from normalcy.detectors.image.common import ImageDetector


class GaussianAD(ImageDetector):
    """Sum over stages of the Mahalanobis distance of the image's average-pooled stage features."""

    name = "gaussian"
    min_fit_items = 2
    raw_features = True

    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        weights: str | Path | None = None,
        image_size: int = 256,
        resize_mode: str = "stretch",
        strides: Sequence[int] = (4, 8, 16, 32),
        batch_size: int = 16,
        alpha: float = 0.05,
        calibration_fraction: float = 0.2,
        seed: int = 0,
        progress: bool = True,
    ) -> None:
        self._store_params(locals())

    aggregate = 1
    project_dim = None
    sigma = 0.0

    def _pooled(self, items: list, desc: str) -> list[torch.Tensor]:
        """Per stage: N×C average-pooled features over the valid (non-padding) cells."""
        per_stage: list[list[torch.Tensor]] = []
        for stages, _, valid in self.iter_features(items, desc, raw=True):
            for i, f in enumerate(stages):
                v = torch.nn.functional.interpolate(valid[:, None].float(), size=f.shape[-2:], mode="nearest")
                pooled = (f * v).sum((2, 3)) / v.sum((2, 3)).clamp(min=1)
                if len(per_stage) <= i:
                    per_stage.append([])
                per_stage[i].append(pooled)
        return [torch.cat(parts).double() for parts in per_stage]

    def _fit(self, items: list) -> None:
        means, precisions = [], []
        for x in self._pooled(items, "fit features"):
            cov, _ = ledoit_wolf(x.numpy())
            means.append(x.mean(0))
            precisions.append(torch.linalg.pinv(torch.from_numpy(cov), hermitian=True))
        self.means_ = means
        self.precisions_ = precisions

    def _score(self, items: list) -> ScoreResult:
        total = None
        for x, mu, prec in zip(self._pooled(items, "score"), self.means_, self.precisions_):
            d = x - mu
            m = torch.einsum("nc,cd,nd->n", d, prec, d).clamp(min=0).sqrt()
            total = m if total is None else total + m
        return ScoreResult(total.numpy(), None)

    def _state_arrays(self) -> dict[str, np.ndarray]:
        out = {}
        for i, (mu, prec) in enumerate(zip(self.means_, self.precisions_)):
            out[f"mean_{i}"] = mu.numpy()
            out[f"precision_{i}"] = prec.numpy()
        return out

    def _load_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        n = len([k for k in arrays if k.startswith("mean_")])
        self.means_ = [torch.from_numpy(np.asarray(arrays[f"mean_{i}"], dtype=np.float64)) for i in range(n)]
        self.precisions_ = [torch.from_numpy(np.asarray(arrays[f"precision_{i}"], dtype=np.float64)) for i in range(n)]
