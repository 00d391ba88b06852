"""PaDiM (Defard et al., 2021): a Gaussian per feature-map position; score = Mahalanobis distance."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from normalcy.detectors.image.common import ImageDetector, masked_max
from normalcy.errors import ParameterError


class PaDiM(ImageDetector):
    """Per-position mean and regularized covariance of a random channel subset of the patch features."""

    name = "padim"
    min_fit_items = 2

    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        weights: str | Path | None = None,
        image_size: int = 256,
        resize_mode: str = "stretch",
        strides: Sequence[int] = (8, 16),
        aggregate: int = 1,
        project_dim: int | None = None,
        n_features: int = 100,
        epsilon: float = 0.01,
        sigma: float = 4.0,
        batch_size: int = 16,
        alpha: float = 0.01,
        pixel_fpr: float = 0.001,
        calibration_fraction: float = 0.2,
        seed: int = 0,
        progress: bool = True,
    ) -> None:
        self._store_params(locals())

    def _fit(self, items: list) -> None:
        if self.epsilon <= 0:
            raise ParameterError(f"epsilon must be > 0 (covariance regularization), got {self.epsilon}")
        c = self.extractor.out_channels
        gen = torch.Generator().manual_seed(self.seed)
        chans = torch.randperm(c, generator=gen)[: min(self.n_features, c)].sort().values
        s1 = s2 = None
        n = 0
        for feats, _, _ in self.iter_features(items, "fit features"):
            f = feats[:, chans].flatten(2).permute(0, 2, 1).double()  # B×P×C
            s1 = f.sum(0) if s1 is None else s1 + f.sum(0)
            outer = torch.einsum("bpc,bpd->pcd", f, f)
            s2 = outer if s2 is None else s2 + outer
            n += f.shape[0]
        mean = s1 / n
        cov = (s2 - n * torch.einsum("pc,pd->pcd", mean, mean)) / max(n - 1, 1)
        cov += self.epsilon * torch.eye(cov.shape[-1], dtype=cov.dtype)
        self.channels_ = chans
        self.mean_ = mean.float()
        self.precision_ = torch.linalg.inv(cov).float()

    def _score_features(self, feats: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, _, h, w = feats.shape
        f = feats[:, self.channels_].flatten(2).permute(0, 2, 1)  # B×P×C
        if f.shape[1] != self.mean_.shape[0]:
            raise ParameterError("image grid differs from the fitted one: PaDiM needs the same image_size")
        delta = f - self.mean_[None]
        dp = delta.transpose(0, 1)  # P×B×C: one small batched matmul per position
        d2 = (torch.bmm(dp, self.precision_) * dp).sum(-1).transpose(0, 1).clamp_(min=0)
        maps = d2.sqrt().reshape(b, h, w)
        return masked_max(maps, valid), maps

    def _state_arrays(self) -> dict[str, np.ndarray]:
        return {"channels": self.channels_.numpy(), "mean": self.mean_.numpy(), "precision": self.precision_.numpy()}

    def _load_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.channels_ = torch.from_numpy(np.asarray(arrays["channels"], dtype=np.int64))
        self.mean_ = torch.from_numpy(np.ascontiguousarray(arrays["mean"], dtype=np.float32))
        self.precision_ = torch.from_numpy(np.ascontiguousarray(arrays["precision"], dtype=np.float32))
