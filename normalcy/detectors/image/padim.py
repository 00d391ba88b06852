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


SHRINKAGE = (None, "identity", "pooled")  # position_shrinkage: none, Ledoit–Wolf toward tr(S)/c·I, toward pooled S


def _accumulate(batches: Iterable[torch.Tensor], channels: torch.Tensor,
                fourth: bool) -> tuple[tuple[int, int], torch.Tensor | None, dict[str, torch.Tensor]]:
    """Per-position raw moments of the chosen channels, in float64, summed batch by batch (never all at once).

    Moments of y = x − m₀ (m₀: the first batch's per-channel mean, for rounding): n (P), s1 = Σy (P×c),
    s2 = Σyyᵀ (P×c×c) and, when `fourth` (Ledoit–Wolf needs them), s3 = Σ‖y‖²y (P×c) and s4 = Σ‖y‖⁴ (P).
    """
    sums: dict[str, torch.Tensor] = {}
    shift = None
    grid = (0, 0)
    for feats in batches:
        grid = tuple(feats.shape[-2:])
        f = feats[:, channels].flatten(2).permute(0, 2, 1).double()  # B×P×C
        shift = f.mean((0, 1)) if shift is None else shift
        y = f - shift
        parts = {"n": torch.full((y.shape[1],), float(y.shape[0]), dtype=y.dtype), "s1": y.sum(0),
                 "s2": torch.einsum("bpc,bpd->pcd", y, y)}
        if fourth:
            sq = y.pow(2).sum(2)  # B×P
            parts.update(s3=torch.einsum("bp,bpc->pc", sq, y), s4=sq.pow(2).sum(0))
        for k, v in parts.items():
            sums[k] = v if k not in sums else sums[k].add_(v)
    return grid, shift, sums


def _box_sum(sums: dict[str, torch.Tensor], grid: tuple[int, int], size: int) -> dict[str, torch.Tensor]:
    """Each position's moments summed over its size×size neighbouring positions on the h×w grid (fewer at borders)."""
    h, w = grid
    r = size // 2
    out = {}
    for k, v in sums.items():
        g = v.reshape(h, w, *v.shape[1:])
        acc = torch.zeros_like(g)
        for di in range(-r, r + 1):
            for dj in range(-r, r + 1):
                ti, si = slice(max(0, -di), h - max(0, di)), slice(max(0, di), h - max(0, -di))
                tj, sj = slice(max(0, -dj), w - max(0, dj)), slice(max(0, dj), w - max(0, -dj))
                acc[ti, tj] += g[si, sj]
        out[k] = acc.reshape(v.shape)
    return out


def shrinkage_intensity(scatter: torch.Tensor, fourth: torch.Tensor, n: torch.Tensor,
                        target: torch.Tensor) -> torch.Tensor:
    """Ledoit–Wolf intensity λ ∈ [0, 1] per position, from centred moments (why: few images per 100-d Gaussian).

    With S = W/n the biased sample covariance (W = Σ zzᵀ, z = x − x̄, n samples), T the target (here fixed):
      β̄² = (1/n²)·Σ_k ‖z_k z_kᵀ − S‖²_F = (1/n²)·(Σ_k ‖z_k‖⁴ − n‖S‖²_F)   (the variance of S's entries),
      δ²  = ‖S − T‖²_F,   λ = min(β̄², δ²) / δ².
    With T = tr(S)/c·I this is sklearn's `ledoit_wolf_shrinkage` (Ledoit & Wolf 2004); with T the covariance pooled
    over all positions it is the same estimator toward another fixed target (the target's own noise, from P× more
    samples, is ignored). `scatter` P×c×c = W, `fourth` P = Σ‖z‖⁴, `n` P, `target` P×c×c or c×c (biased scale).
    """
    s = scatter / n[:, None, None]
    beta = (fourth - n * s.pow(2).sum((1, 2))) / n.pow(2)
    delta = (s - target).pow(2).sum((1, 2))
    return (torch.minimum(beta, delta) / delta.clamp(min=1e-300)).clamp(0.0, 1.0)


def fit_position_gaussian(batches: Iterable[torch.Tensor], channels: torch.Tensor, epsilon: float,
                          shrinkage: str | None = None,
                          neighbourhood: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """B×C×h×w feature batches → per-position mean (P×c) and precision (P×c×c) of the chosen channels.

    Sums are accumulated in float64 batch by batch (never all features at once); covariance + epsilon·I.
    `neighbourhood=k` (odd): each position's mean and covariance come from the samples of its k×k neighbouring
    positions (k² times the samples, fewer at the grid border). `shrinkage`: the unbiased covariance S is replaced by
    (1 − λ)·S + λ·T with the Ledoit–Wolf intensity λ of each position (`shrinkage_intensity`), T = tr(S)/c·I
    ("identity") or the mean of S over all positions ("pooled"); then epsilon·I is added as before.
    """
    if shrinkage not in SHRINKAGE:
        raise ParameterError(f"position shrinkage must be one of {', '.join(map(repr, SHRINKAGE))}, got {shrinkage!r}")
    if neighbourhood < 1 or neighbourhood % 2 == 0:
        raise ParameterError(f"position neighbourhood must be an odd size ≥ 1, got {neighbourhood}")
    grid, shift, sums = _accumulate(batches, channels, fourth=shrinkage is not None)
    if shift is None or float(sums["n"][0]) < 2:
        got = 0 if shift is None else int(sums["n"][0])
        raise ParameterError(f"a per-position Gaussian needs at least 2 images, got {got}")
    if neighbourhood > 1:
        sums = _box_sum(sums, grid, neighbourhood)
    n, d = sums["n"], sums["s1"] / sums["n"][:, None]  # d: the mean in shifted coordinates
    scatter = sums["s2"] - n[:, None, None] * torch.einsum("pc,pd->pcd", d, d)
    cov = scatter / (n - 1)[:, None, None]
    if shrinkage is not None:
        cov = _shrunk(cov, scatter, _centred_fourth(sums, d), n, shrinkage)
    cov += epsilon * torch.eye(cov.shape[-1], dtype=cov.dtype)
    return (d + shift).float(), torch.linalg.inv(cov).float()


def _centred_fourth(sums: dict[str, torch.Tensor], d: torch.Tensor) -> torch.Tensor:
    """Σ‖z‖⁴ per position (z = y − d, d = the mean of y) from the raw moments, so one streamed pass suffices.

    Expanding ‖y − d‖⁴ = (‖y‖² − 2yᵀd + ‖d‖²)² and summing: s4 − 4dᵀs3 + 4dᵀs2d + 2‖d‖²·tr(s2) − 4‖d‖²·dᵀs1 + n‖d‖⁴.
    """
    dd = d.pow(2).sum(1)
    s2 = sums["s2"]
    return (sums["s4"] - 4 * (d * sums["s3"]).sum(1) + 4 * torch.einsum("pc,pcd,pd->p", d, s2, d)
            + 2 * dd * s2.diagonal(dim1=1, dim2=2).sum(1) - 4 * dd * (d * sums["s1"]).sum(1) + sums["n"] * dd.pow(2))


def _shrunk(cov: torch.Tensor, scatter: torch.Tensor, fourth: torch.Tensor, n: torch.Tensor,
            kind: str) -> torch.Tensor:
    """(1 − λ)·S + λ·T per position: λ from the biased moments (Ledoit–Wolf's definition), applied to the unbiased S
    and target, so λ = 0 gives back the plain estimate. T: tr(S)/c·I ("identity") or S averaged over positions."""

    def target(m: torch.Tensor) -> torch.Tensor:
        if kind == "identity":
            return m.diagonal(dim1=1, dim2=2).mean(1)[:, None, None] * torch.eye(m.shape[-1], dtype=m.dtype)
        return m.mean(0)

    lam = shrinkage_intensity(scatter, fourth, n, target(scatter / n[:, None, None]))[:, None, None]
    return (1 - lam) * cov + lam * target(cov)


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
    """Per-position mean and regularized covariance of a random channel subset of the patch features.

    `shrinkage` / `neighbourhood`: as PatchCore's `position_shrinkage` / `position_neighbourhood`
    (fit_position_gaussian); off by default: shrinkage lowered PaDiM's image AUROC on both real sets (docs/design.md,
    "Sixth pass"), likely because its raw, unstandardized channels make a scaled identity a poor target.
    """

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
        shrinkage: str | None = None,
        neighbourhood: int = 1,
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
                                                chans, self.epsilon, self.shrinkage, self.neighbourhood)
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
