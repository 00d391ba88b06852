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
`intensity="auto"` (default, as the few-shot detectors): every image is first scaled by one global gain to mean grey
0.5, so an exposure change within a batch is not an anomaly (docs/fewshot.md, "MuSc with gain normalization");
`intensity=None` scores raw images, as model files saved before this option do.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import torch
import torch.nn.functional as F

from normalcy.detectors.base import Prediction, ScoreResult, take
from normalcy.detectors.image.fewshot import FewShot, aggregate_stages, item_hw
from normalcy.errors import DataError, ParameterError


def anomalous_share(scores: np.ndarray, seed: int = 0, separation: float = 2.0) -> float:
    """Estimated share of anomalous images in a batch from its image scores (NaN below 8 images).

    A two-component Gaussian mixture of the scores; the upper component's weight is the share when the two are
    clearly apart (Ashman's D > `separation`, and a lower BIC than one Gaussian), else 0 (one mode: nothing stands
    out as a group).
    """
    from sklearn.mixture import GaussianMixture

    x = np.asarray(scores, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size < 8 or np.ptp(x) == 0:
        return float("nan") if x.size < 8 else 0.0
    reg = 1e-6 * float(np.var(x)) + 1e-12
    one = GaussianMixture(1, reg_covar=reg).fit(x[:, None])
    gm = GaussianMixture(2, random_state=seed, reg_covar=reg).fit(x[:, None])
    mu, var = gm.means_[:, 0], gm.covariances_.reshape(-1)
    lo, hi = np.argsort(mu)
    d = abs(mu[hi] - mu[lo]) / np.sqrt((var[lo] + var[hi]) / 2.0)
    if d <= separation or gm.bic(x[:, None]) >= one.bic(x[:, None]):
        return 0.0
    return float((gm.predict(x[:, None]) == hi).mean())


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
        aspect: str = "square",
        strides: Sequence[int] = (8, 16),
        aggregates: Sequence[int] = (1, 3, 5),
        lowest_fraction: float = 0.3,
        chunk_size: int = 32,
        reduce_dim: int | None = 64,
        max_anomalous_share: float = 0.3,
        rescore_neighbors: int = 3,
        rescore_weight: float = 1.0,
        project_dim: int | None = None,
        pad: float = 0.125,
        border: float = 0.0625,
        center: bool = True,
        sigma: float = 4.0,
        batch_size: int = 8,
        memory_budget_mb: int = 256,
        alpha: float = 0.05,
        pixel_fpr: float = 0.001,
        seed: int = 0,
        progress: bool = True,
        intensity: str | None = "auto",
    ) -> None:
        self._store_params(locals())

    # ---- fit: nothing to learn; optional calibration batch -------------------------------------------------
    def fit(self, X: Any = None, y: Any = None) -> Self:
        """Zero-shot: nothing is learned. Given normal images, their batch scores become the calibration set."""
        return self._calibrate_untrained(X, "batch", warn=False)

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

    def _canvas_shape(self, height: int, width: int) -> tuple[int, int]:
        """The batch's common canvas: images are compared cell by cell, so one batch has one canvas shape."""
        return getattr(self, "_batch_canvas", None) or super()._canvas_shape(height, width)

    def _score(self, items: list) -> ScoreResult:
        n = len(items)
        self._check(n)
        self._batch_canvas = None
        shapes = {FewShot._canvas_shape(self, *item_hw(it)) for it in items}
        size = int(self.image_size)
        self._batch_canvas = shapes.pop() if len(shapes) == 1 else (size, size)  # mixed shapes: square canvas
        scores = torch.empty(2, n, dtype=torch.float64)  # row 0: lowest-fraction rule, row 1: all other images
        desc = [torch.empty(0)] * n
        maps: list[list] = [[None] * n, [None] * n]
        for idx in self.chunks(n):
            s, m, g = self._score_chunk(take(items, idx))
            for j, i in enumerate(idx):
                scores[:, i], maps[0][i], maps[1][i], desc[i] = s[:, j], m[0][j], m[1][j], g[j]
        use = self._check_share(scores[1].numpy())
        # RsCIN pulls a score towards its look-alikes' and so rests on the same mostly-normal assumption: skipped
        # in the fallback (MT, 75 % anomalous batch: 0.784 raw vs 0.741 re-scored)
        scores = self.rescore(scores[0], torch.stack(desc)) if use == 0 else scores[1]
        return ScoreResult(scores.numpy(), maps[use])

    def _check_share(self, robust: np.ndarray) -> int:
        """Estimate the batch's anomalous share; above `max_anomalous_share`, warn and use the all-images rule (1).

        The lowest-fraction rule assumes a defect recurs in fewer than `lowest_fraction` of the images: when many
        images share a defect, they vouch for each other and it disappears. The share is estimated on the
        all-images scores (a patch must be found in every other image), which such repeats cannot hide.
        """
        limit = float(self.max_anomalous_share)
        if not 0.0 < limit <= 1.0:
            raise ParameterError(f"max_anomalous_share must be in (0, 1], got {self.max_anomalous_share}")
        self.anomalous_share_ = anomalous_share(robust, self.seed)
        if not self.anomalous_share_ > limit:
            return 0
        warnings.warn(f"MuSc: about {self.anomalous_share_:.0%} of this batch of {len(robust)} images looks anomalous "
                      f"(> max_anomalous_share={limit}); the batch is not mostly normal, so each patch is now scored "
                      "against all other images (no RsCIN re-scoring); better: fit a few-shot detector on "
                      "known-good images", UserWarning, stacklevel=4)
        return 1

    def _score_chunk(self, items: list) -> tuple[torch.Tensor, list[np.ndarray], torch.Tensor]:
        """Mutual patch scores of one chunk: (image scores, maps at image size, global descriptors)."""
        stages, placements, valid = [], [], []
        for raw, pl, v in self.iter_features(items, "musc features", raw=True):
            stages.append([f.half() for f in raw])  # half precision keeps a chunk's raw stages small
            placements += pl
            valid.append(v)
        valid_t = torch.cat(valid)
        cells = self._pad_cells()
        low, everyone, desc = 0.0, 0.0, None
        for size in self.aggregates:
            feats = torch.cat([aggregate_stages([f.float() for f in st], int(size), cells) for st in stages])
            if desc is None:
                m = valid_t[:, None].float()
                desc = F.normalize((feats * m).sum((2, 3)) / m.sum((2, 3)).clamp(min=1), dim=1)
            lo, al = self.mutual_maps(self.reduce(feats, valid_t), valid_t)
            low, everyone = low + lo, everyone + al
        pair = [low / len(self.aggregates), everyone / len(self.aggregates)]
        img_scores = torch.stack([self.image_scores(p, valid_t).double() for p in pair])
        return img_scores, [self.restore(p, placements) for p in pair], desc

    def reduce(self, feats: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Project patch features onto the chunk's top `reduce_dim` principal axes (approximate, cheaper distances).

        Nearest-neighbour cost is linear in the feature width; the leading axes of the chunk's own patches keep
        most of the distance structure (PCA fitted on up to 8,192 seeded valid patches).
        """
        d = self.reduce_dim
        b, c, h, w = feats.shape
        if d is None or int(d) >= c:
            return feats
        if int(d) < 1:
            raise ParameterError(f"reduce_dim must be a positive integer or None, got {d}")
        x = feats.permute(0, 2, 3, 1)[valid]
        gen = torch.Generator().manual_seed(int(self.seed))
        sample = x[torch.randperm(x.shape[0], generator=gen)[:8192]]
        mean = sample.mean(0)
        axes = torch.linalg.svd(sample - mean, full_matrices=False).Vh[: int(d)]
        return torch.einsum("bchw,dc->bdhw", feats - mean[None, :, None, None], axes).contiguous()

    def mutual_maps(self, feats: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Two B×h×w maps of each cell's nearest-patch distance to every other image: the mean of the lowest
        `lowest_fraction` of them (MuSc's rule), and the mean over all other images (robust to repeated defects)."""
        b, c, h, w = feats.shape
        x = feats.permute(0, 2, 3, 1).reshape(b, h * w, c)
        sq = x.pow(2).sum(2)
        far = torch.where(valid.reshape(b, h * w), 0.0, float("inf"))  # invalid cells never match
        keep = max(1, math.ceil(float(self.lowest_fraction) * (b - 1)))
        per_block = max(1, int(self.memory_budget_mb) * 2**20 // (4 * (h * w) ** 2))
        # nearest[i, p, j]: squared distance of cell p of image i to its nearest cell of image j. Without padding
        # cells, one product per unordered pair serves both directions (min over columns for i, over rows for j).
        symmetric = bool(valid.all())
        nearest = torch.full((b, h * w, b), float("inf"))
        for i in range(b):
            for j0 in range(i + 1 if symmetric else 0, b, per_block):
                j1 = min(b, j0 + per_block)
                d2 = torch.baddbmm((sq[j0:j1] + far[j0:j1])[:, None, :], x[i].expand(j1 - j0, -1, -1),
                                   x[j0:j1].transpose(1, 2), alpha=-2.0)  # J×p×q, without |x_p|²
                d2 += sq[i][None, :, None]
                nearest[i, :, j0:j1] = d2.amin(dim=2).T
                if symmetric:
                    nearest[j0:j1, :, i] = d2.amin(dim=1)
        diag = torch.arange(b)
        nearest[diag, :, diag] = float("inf")
        nearest.clamp_(min=0).sqrt_()
        out = nearest.topk(keep, dim=2, largest=False).values.mean(dim=2)  # the image itself (inf) never in it
        diag = torch.arange(b)
        nearest[diag, :, diag] = 0.0
        out_all = nearest.sum(dim=2) / max(1, b - 1)
        return out.view(b, h, w), out_all.view(b, h, w)

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
        self, X: Any, alpha: float | None = None, pixel_fpr: float | None = None, chunk: int | None = None,
        **kwargs: Any,
    ) -> Iterator[Prediction]:
        """Predictions in input order; the readable images are scored together (unreadable ones → error rows)."""
        return super().predict_iter(X, alpha, pixel_fpr, chunk or 2**62, **kwargs)

    def _state_arrays(self) -> dict[str, np.ndarray]:
        return {}

    def _load_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        return None
