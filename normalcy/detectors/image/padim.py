"""PaDiM (Defard et al., 2021): a Gaussian per feature-map position; score = Mahalanobis distance."""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from normalcy.detectors.image.common import ImageDetector, masked_max
from normalcy.errors import ParameterError


def random_channels(n_channels: int, n_features: int, seed: int) -> torch.Tensor:
    """A seeded, sorted random subset of `n_features` channel indices (all of them when n_features ≥ C)."""
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randperm(n_channels, generator=gen)[: min(int(n_features), n_channels)].sort().values


def fit_position_gaussian(batches: Iterable[torch.Tensor], channels: torch.Tensor,
                          epsilon: float) -> tuple[torch.Tensor, torch.Tensor]:
    """B×C×h×w feature batches → per-position mean (P×c) and precision (P×c×c) of the chosen channels.

    Sums are accumulated in float64 batch by batch (never all features at once); covariance + epsilon·I.
    """
    s1 = s2 = None
    n = 0
    for feats in batches:
        f = feats[:, channels].flatten(2).permute(0, 2, 1).double()  # B×P×C
        s1 = f.sum(0) if s1 is None else s1 + f.sum(0)
        outer = torch.einsum("bpc,bpd->pcd", f, f)
        s2 = outer if s2 is None else s2 + outer
        n += f.shape[0]
    if s1 is None or s2 is None or n < 2:
        raise ParameterError(f"a per-position Gaussian needs at least 2 images, got {n}")
    mean = s1 / n
    cov = (s2 - n * torch.einsum("pc,pd->pcd", mean, mean)) / (n - 1)
    cov += epsilon * torch.eye(cov.shape[-1], dtype=cov.dtype)
    return mean.float(), torch.linalg.inv(cov).float()


FACTOR_BLOCKS = 4  # row blocks of the triangular factor: measured 3.5 → 1.5 ms per image at batch 1 (100 channels)
_FACTORS: dict[int, tuple[weakref.ref, tuple[torch.Tensor, ...]]] = {}  # id(precision) → (weak ref, its factor)


def position_factor(precision: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Upper-triangular U with precision = UᵀU per position (float32), as row blocks without their zero part.

    A distance is then ‖U(x − μ)‖ instead of (x − μ)ᵀ·precision·(x − μ): the same value to float rounding, and
    cheaper at batch 1, where reading the P×c×c factor is the cost: block k holds U's rows a:b from column a on
    (P×(b−a)×(c−a)), so the zeros below the diagonal are mostly never stored or read (docs/performance.md). Computed
    once per precision tensor and cached by identity for its lifetime; a position whose precision is not positive
    definite falls back to its eigen-factor (not triangular: then the blocks keep every column).
    """
    key = id(precision)
    hit = _FACTORS.get(key)
    if hit is not None and hit[0]() is precision:
        return hit[1]
    p64 = precision.double()
    low, info = torch.linalg.cholesky_ex(p64)
    factor = low.transpose(1, 2)
    bad = (info != 0).nonzero()[:, 0]
    if bad.numel():  # eigen-factor diag(√λ⁺)·Vᵀ: negative eigenvalues (rounding) count as zero, like the clamp
        lam, vec = torch.linalg.eigh(p64[bad])
        factor[bad] = lam.clamp(min=0).sqrt()[:, :, None] * vec.transpose(1, 2)
    factor = factor.float()
    c = factor.shape[-1]
    step = max(1, -(-c // FACTOR_BLOCKS))
    first = (lambda a: 0) if bad.numel() else (lambda a: a)  # noqa: E731  (eigen-factors are full)
    blocks = tuple(factor[:, a : a + step, first(a) :].contiguous() for a in range(0, c, step))
    _FACTORS[key] = (weakref.ref(precision, lambda _: _FACTORS.pop(key, None)), blocks)
    return blocks


def position_distances(feats: torch.Tensor, channels: torch.Tensor, mean: torch.Tensor,
                       precision: torch.Tensor) -> torch.Tensor:
    """B×C×h×w features → B×h×w Mahalanobis distance of each cell to its own position's Gaussian."""
    b, _, h, w = feats.shape
    f = feats[:, channels].flatten(2).permute(0, 2, 1)  # B×P×C
    if f.shape[1] != mean.shape[0]:
        raise ParameterError("image grid differs from the fitted one: a per-position Gaussian needs the same "
                             "image_size at fit and predict time")
    dp = (f - mean[None]).transpose(0, 1).contiguous()  # P×B×C (measured: other layouts hit a path 4× slower)
    dpt = dp.transpose(1, 2)  # P×C×B
    c = dpt.shape[1]
    d2 = None
    for block in position_factor(precision):  # one product per position and block: Σ_k ‖U_k (x − μ)‖²
        y = torch.bmm(block, dpt[:, c - block.shape[2] :]).pow_(2).sum(1)  # P×B
        d2 = y if d2 is None else d2.add_(y)
    return d2.T.sqrt().reshape(b, h, w)


class PaDiM(ImageDetector):
    """Per-position mean and regularized covariance of a random channel subset of the patch features."""

    name = "padim"
    min_fit_items = 2

    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        weights: str | Path | None = None,
        image_size: int = 256,
        resize_mode: str = "aspect",
        strides: Sequence[int] = (8, 16),
        aggregate: int = 1,
        project_dim: int | None = None,
        n_features: int = 100,
        epsilon: float = 0.01,
        sigma: float = 4.0,
        batch_size: int = 16,
        alpha: float = 0.05,
        pixel_fpr: float = 0.001,
        calibration_fraction: float = 0.2,
        seed: int = 0,
        progress: bool = True,
    ) -> None:
        self._store_params(locals())

    def _fit(self, items: list) -> None:
        if self.epsilon <= 0:
            raise ParameterError(f"epsilon must be > 0 (covariance regularization), got {self.epsilon}")
        chans = random_channels(self.extractor.out_channels, self.n_features, self.seed)
        mean, precision = fit_position_gaussian((f for f, _, _ in self.iter_features(items, "fit features")),
                                                chans, self.epsilon)
        self.channels_, self.mean_, self.precision_ = chans, mean, precision

    def _score_features(self, feats: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = position_distances(feats, self.channels_, self.mean_, self.precision_)
        return masked_max(maps, valid), maps

    def _state_arrays(self) -> dict[str, np.ndarray]:
        return {"channels": self.channels_.numpy(), "mean": self.mean_.numpy(), "precision": self.precision_.numpy()}

    def _state_meta(self) -> dict[str, Any]:
        return self._canvas_meta()

    def _load_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self._load_canvas(meta)
        self.channels_ = torch.from_numpy(np.asarray(arrays["channels"], dtype=np.int64))
        self.mean_ = torch.from_numpy(np.ascontiguousarray(arrays["mean"], dtype=np.float32))
        self.precision_ = torch.from_numpy(np.ascontiguousarray(arrays["precision"], dtype=np.float32))
