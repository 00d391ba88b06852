"""PatchCore (Roth et al., 2022): a coreset memory bank of normal patch features; score = NN distance.

Defaults measured on two real sets (docs/design.md, `benchmarks/ablate_image.py`): patch features are standardized
per channel on the normal patches (`standardize`), and the NN distance is fused with a per-position Gaussian
(PaDiM's Mahalanobis distance, `positional`), each term z-scored on held-out normal images so no label and no unit
decides the mix. The image score is the largest cell of the map outside a thin border band (`border`, default 1/16
of the side: the paper's 224-of-256 centre crop), where zero-padded CNN features are atypical; maps keep every cell.
The backbone stays EfficientNet-Lite0 (`DEFAULT_BACKBONE`): Lite2 raised pixel AUROC on both real sets but lowered
image AUROC on both and on the demo's fabric (all three of its figures), so it is an option (`backbone=`,
`normalcy[lite]`), not the default; the figures are in docs/design.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from normalcy.calibration.groups import AUTO, GroupModel, as_labels, resolve_groups
from normalcy.detectors.base import ScoreResult
from normalcy.detectors.image.bank import open_bank, streamed_nearest, write_bank
from normalcy.detectors.image.common import ImageDetector, masked_max
from normalcy.detectors.image.modes import (
    MIN_MODE_IMAGES,
    PositionModes,
    Projection,
    find_image_modes,
    image_descriptors,
)
from normalcy.detectors.image.padim import fit_position_gaussian, position_distances, random_channels
from normalcy.detectors.image.search import (
    Bank,
    IVFIndex,
    greedy_coreset,
    is_list_ordered,
    nearest_neighbors,
    squared_norms,
    train_lists,
)
from normalcy.detectors.image.views import ViewItems, check_views, unflip
from normalcy.errors import ModelFileError, ParameterError
from normalcy.features.preprocess import restore_maps
from normalcy.features.standardize import ChannelStats

DEFAULT_BACKBONE = "efficientnet_lite0"  # a core dependency (pyproject.toml), not an extra
EXACT_SEARCH_MAX = 2048  # banks up to this size are searched exactly with search="auto" (above it IVF costs less:
# about n_probe·128 candidates per query; measured equal at 2,048 rows, IVF 5.5× faster at 13.5k, docs/performance.md)
SEARCH_MODES = ("auto", "exact", "ivf", "faiss-ivf", "faiss-hnsw")
BANK_STORAGE = ("inline", "mmap")
MODES = (None, "auto", "groups")  # per-mode position term: off, modes found by clustering, the fit's groups
CONTEXT_STRIDE = 32  # `context=True`: the coarsest stage, whose receptive field covers large textured areas


def split_holdout(items: list, fraction: float, seed: int) -> tuple[list, list]:
    """A seeded split of the fit images into (fit, held-out); below 4 images both parts are all of them."""
    n = len(items)
    if n < 4:
        return list(items), list(items)
    n_hold = min(n - 2, max(1, round(fraction * n)))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed) + 1)).tolist()
    hold = set(order[:n_hold])
    return [it for i, it in enumerate(items) if i not in hold], [it for i, it in enumerate(items) if i in hold]


def crossfit_folds(n: int, fraction: float, seed: int) -> np.ndarray:
    """The fold of each of n fit images: round(1/fraction) seeded folds (at least 2), so each is a `fraction`."""
    k = max(2, min(n, round(1.0 / fraction)))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed) + 1)).numpy()
    folds = np.empty(n, dtype=np.int64)
    folds[order] = np.arange(n) % k
    return folds


def mean_spread(values: list[torch.Tensor]) -> torch.Tensor:
    """[μ, σ] (float64) of the pooled values of normal images' cells: a term's z-score normalizer (σ floored)."""
    a = torch.cat(values).double()
    return torch.stack([a.mean(), a.std().clamp(min=1e-12)])


def fusion_stats(cells: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """[μ_nn, σ_nn, μ_pos, σ_pos] over (NN distance, position distance) cells of normal images, pooled."""
    return torch.cat([mean_spread([nn for nn, _ in cells]), mean_spread([pos for _, pos in cells])])


class PatchCore(ImageDetector):
    """Nearest-neighbour distance of each test patch to a greedy-coreset memory bank of normal patches.

    With `positional=True` a `holdout` fraction of the fit images (seeded) builds neither the bank nor the
    Gaussians: it only measures the two distances' mean and spread on normal images for the fusion.
    Measured in docs/design.md ("Nuisance brightness and sub-populations"): `intensity="gain"` (the default) scales
    each image to mean grey 0.5 before the backbone, `intensity_jitter=True` adds gain-shifted copies of the fit images
    (measured with `intensity=None`; under the default gain normalization the copies are scaled back, only clipping
    differs),
    `modes="auto"|"groups"` fits the Gaussian and normalizers per normal mode (detectors/image/modes.py).
    `test_views=("identity", "hflip"[, "vflip"])` averages the NN distance maps of the test image and its flips,
    flipped back, before the fusion and the image score (detectors/image/views.py; one backbone pass per view;
    docs/design.md "Fourth pass"). `refit_holdout=True` adds the held-out images to the bank and the Gaussian once the
    normalizers are measured (better on both real sets, lower demo-fabric image AUROC: an option, same section).
    `context=True` adds the backbone's stride-32 stage as a third term of the map only: each stride-32 cell's distance
    to a coreset of normal stride-32 cells, upsampled and z-scored on the held-out images like the other two; it sees
    large low-contrast texture areas (Magnetic Tile "uneven") that 3×3 patches miss, and leaves the image score alone
    (docs/design.md, "Fifth pass (issue 15): a context term for large textured areas").
    `crossfit=True` builds the bank and the Gaussian from every fit image and measures the normalizers by
    cross-fitting: round(1/holdout) folds, each scored against a bank and Gaussian built from the other folds
    (docs/design.md, "Fifth pass"; one coreset run per fold more at fit time; it supersedes `refit_holdout`).
    `position_shrinkage="identity"` (default) shrinks each position's covariance by its Ledoit–Wolf intensity toward
    a scaled identity ("pooled": toward the covariance pooled over positions; None: the plain estimate, as model
    files saved before it); `position_neighbourhood=3` fits each position on its 3×3 neighbours' samples
    (padim.fit_position_gaussian). Shrinkage ties the plain estimate on the full real sets and is better with few
    fit images and on the demo (docs/design.md, "Sixth pass"); the neighbourhood is off.
    """

    name = "patchcore"
    # files saved before `intensity` existed were fitted on raw images: they load with intensity=None
    OLD_FILE_PARAMS = {"intensity": None, "position_shrinkage": None}
    # which term test_views average: "nn" (the position-free NN distance; the position term is the identity view's,
    # since flipped content is not where the Gaussian expects it) or "fused" (each view's fused map: lower in the
    # fourth pass's screen, kept for benchmarks/ablate_image.py)
    _view_terms = "nn"

    def __init__(
        self,
        backbone: str = DEFAULT_BACKBONE,
        weights: str | Path | None = None,
        image_size: int = 256,
        resize_mode: str = "aspect",
        strides: Sequence[int] = (8, 16),
        aggregate: int = 3,
        project_dim: int | None = None,
        standardize: bool = True,
        positional: bool = True,
        position_features: int = 100,
        position_shrinkage: str | None = "identity",
        position_neighbourhood: int = 1,
        context: bool = False,
        holdout: float = 0.2,
        refit_holdout: bool = False,
        crossfit: bool = False,
        modes: str | None = None,
        intensity_jitter: bool = False,
        intensity: str | None = "gain",
        test_views: Sequence[str] = ("identity",),
        coreset_ratio: float = 0.1,
        coreset_dim: int = 64,
        reweight: bool = False,
        search: str = "auto",
        n_probe: int = 2,  # IVF lists per query: 8 → 2 costs ≤ 0.0021 AUROC on both real sets (docs/performance.md)
        bank_storage: str = "inline",
        border: float = 0.0625,
        sigma: float = 4.0,
        batch_size: int = 16,
        memory_budget_mb: int = 256,
        alpha: float = 0.05,
        pixel_fpr: float = 0.001,
        calibration_fraction: float = 0.2,
        seed: int = 0,
        progress: bool = True,
    ) -> None:
        self._store_params(locals())

    def fit(self, X: Any, y: Any = None, groups: Any = None, refine: bool = False) -> PatchCore:
        """Fit on normal images. `modes="auto"`: each image is also scored against its own normal mode's position
        term; `modes="groups"`: against its calibration group's (`groups` labels, "subfolders", a CSV, or "auto" =
        found modes). Off by default: it did not win where measured (docs/design.md, "Nuisance brightness and
        sub-populations").
        """
        items = self._prepare(X)
        if self.modes not in MODES:
            raise ParameterError(f"modes must be one of {', '.join(map(repr, MODES))}, got {self.modes!r}")
        follow = self.modes == "groups" and groups is not None
        self._auto_modes = self.modes == "auto" or (follow and isinstance(groups, str) and groups == AUTO)
        self._given_modes = None
        if follow and not self._auto_modes:  # given groups: remembered by item for the fold fits
            resolved = resolve_groups(groups, items)
            if not isinstance(resolved, str):  # an unknown keyword is calibration's error to raise
                labels = as_labels(resolved, len(items))
                self._given_modes = {id(it): str(g) for it, g in zip(items, labels)}
        return super().fit(items, y, groups=groups, refine=refine)

    def iter_features(self, items: list, desc: str = "features", raw: bool = False) -> Any:
        """The feature loop, on gain-normalized images with `intensity="gain"` (detectors/image/intensity.py)."""
        if self.intensity not in (None, "gain"):
            raise ParameterError(f"intensity must be None or 'gain', got {self.intensity!r}")
        if self.intensity == "gain":
            from normalcy.detectors.image.intensity import GainNormalized

            items = GainNormalized(items)
        return super().iter_features(items, desc, raw)

    @property
    def n_modes_(self) -> int:
        """Normal modes the position term was fitted on (1: one pooled population)."""
        modes = getattr(self, "_modes", None)
        return 1 if modes is None else modes.n

    def _fit(self, items: list) -> None:
        if not 0.0 < self.coreset_ratio <= 1.0:
            raise ParameterError(f"coreset_ratio must be in (0, 1], got {self.coreset_ratio}")
        self._position = self._fusion = self._modes = self._context = None  # `modes` was checked by fit
        self._check_context()
        if not self.positional:
            patches = self.collect_patches(self._with_jitter(items))
            self._fit_bank(patches, ChannelStats.fit(patches) if self.standardize else None)
            return
        if self.reweight:
            raise ParameterError("reweight=True works on the plain nearest-neighbour score; use positional=False")
        if not 0.0 < self.holdout < 1.0:
            raise ParameterError(f"holdout must be a fraction in (0, 1), got {self.holdout}")
        if self.crossfit and self.modes is None and len(items) >= 4:
            self._crossfit(items)
            return
        fit_items, held = split_holdout(items, self.holdout, self.seed)
        refit = self.refit_holdout and self.modes is None and len(fit_items) >= 2
        if refit:  # their features serve the normalizers and then the refit: extracted once
            held = self._cache_features(held)
        given = self._given_labels(fit_items)
        fit_items = self._with_jitter(fit_items)  # after the split: held-out images keep no copy in the bank
        if given is not None and len(fit_items) > len(given):  # jitter copies follow their image, item by item
            given = np.concatenate([given, np.repeat(given, (len(fit_items) - len(given)) // len(given))])
        batches = [(f, v) for f, _, v in self.iter_features(fit_items, "fit features")]
        patches = torch.cat([f.permute(0, 2, 3, 1)[v] for f, v in batches])
        self._stats = ChannelStats.fit(patches) if self.standardize else None
        if len(fit_items) >= 2:  # the Gaussians live in the same (standardized) space as the bank
            std = self._standardized
            chans = random_channels(self._main_width(patches.shape[1]), self.position_features, self.seed)
            self._position = (chans, *self._position_gaussian((std(f) for f, _ in batches), chans))
            if given is not None or getattr(self, "_auto_modes", self.modes == "auto"):
                self._modes = self._fit_modes([(std(f), v) for f, v in batches], chans, given)
        self._context = self._fit_context(batches) if self.context else None
        if not refit:
            del batches
        self._fit_bank(patches, self._stats)
        if self._context is not None:  # its normalizers come from the same held-out images (extracted once)
            held = held if refit else self._cache_features(held)
            self._context = (*self._context[:2], self._context_norms(held))
        if self._position is not None:
            self._fusion = self._fusion_norms(held)
        if self._modes is not None:
            self._modes.norms = self._mode_norms(held)
        if refit:
            self._join_held(batches, patches, held)

    def _join_held(self, batches: list, patches: torch.Tensor, held: list) -> None:
        """With `refit_holdout`: once the normalizers are measured, the held-out images join the bank and the
        position Gaussian (`patches` are the fit images' standardized patches; the channel statistics stay)."""
        more = [(self._standardized(f), v) for f, _, v in self.iter_features(held, "held-out normals")]
        chans = self._position[0]
        fit_std = (self._standardized(f) for f, _ in batches)
        self._position = (chans, *self._position_gaussian((*fit_std, *(f for f, _ in more)), chans))
        self._coreset_bank(torch.cat([patches, *(f.permute(0, 2, 3, 1)[v] for f, v in more)]))

    def _crossfit(self, items: list) -> None:
        """`crossfit=True`: the bank and the Gaussian hold every fit image; the normalizers pool K folds,
        each fold's images scored against a bank and Gaussian built without them (in the final standardized space)."""
        if getattr(self, "context", False):  # its own normalizers are measured on the hold-out only
            raise ParameterError("crossfit=True does not fit the context term; use context=False with it")
        folds = crossfit_folds(len(items), self.holdout, self.seed)
        items = self._with_jitter(items)  # jitter copies follow their image into its fold
        copies = (len(items) - len(folds)) // len(folds)
        folds = torch.from_numpy(np.concatenate([folds, np.repeat(folds, copies)]))
        batches = [(f, v) for f, _, v in self.iter_features(items, "fit features")]
        patches = torch.cat([f.permute(0, 2, 3, 1)[v] for f, v in batches])
        self._stats = ChannelStats.fit(patches) if self.standardize else None
        self._standardize_rows(patches)
        chans = random_channels(patches.shape[1], self.position_features, self.seed)
        cells = []
        for k in range(int(folds.max()) + 1):
            cells += self._fold_cells(batches, patches, folds == k, chans)
        self._fusion = fusion_stats(cells)
        self._position = (chans, *self._position_gaussian((self._standardized(f) for f, _ in batches), chans))
        self._coreset_bank(patches)

    def _fold_cells(self, batches: list, patches: torch.Tensor, inside: torch.Tensor,
                    chans: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Both terms' cells of the images marked `inside` (one per image of `batches`), scored against a bank and
        a Gaussian built from the other images only (`patches`: every image's standardized valid patches)."""
        rows = torch.repeat_interleave(inside, torch.cat([v.sum((1, 2)) for _, v in batches]))
        sizes = np.cumsum([0] + [f.shape[0] for f, _ in batches])
        picks = [((f, v), inside[a:b]) for (f, v), a, b in zip(batches, sizes, sizes[1:])]
        rest = (self._standardized(f[~m]) for (f, _), m in picks if (~m).any())
        self._position = (chans, *self._position_gaussian(rest, chans))
        self._coreset_bank(patches[~rows])
        return [self._term_cells(f[m], v[m]) for (f, v), m in picks if m.any()]

    def _position_gaussian(self, batches: Any, chans: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-position Gaussian (mean, precision) of these standardized feature batches, ridge 0.01, with the
        `position_shrinkage` and `position_neighbourhood` settings (padim.fit_position_gaussian)."""
        return fit_position_gaussian(batches, chans, 0.01, self.position_shrinkage, self.position_neighbourhood)

    def _standardized(self, feats: torch.Tensor) -> torch.Tensor:
        """B×C×h×w features in the bank's space: standardized per channel when `standardize` fitted statistics."""
        return feats if self._stats is None else self._stats.apply(feats, dim=1)

    def _fit_bank(self, patches: torch.Tensor, stats: ChannelStats | None) -> None:
        """The greedy-coreset memory bank of these normal patches (standardized in place with `stats`)."""
        self._stats = stats
        self._standardize_rows(patches)
        self._coreset_bank(patches)

    def _standardize_rows(self, patches: torch.Tensor) -> None:
        """N×C patches into the bank's space, in place (the patch matrix can be hundreds of MB)."""
        if self._stats is not None:
            patches.sub_(self._stats.mean).div_(self._stats.scale)

    def _coreset_bank(self, patches: torch.Tensor) -> None:
        """The memory bank: a greedy coreset of these (already standardized) patches, without context channels."""
        patches = patches[:, : self._main_width(patches.shape[1])]
        keep = greedy_coreset(patches, self.coreset_ratio, self.coreset_dim, seed=self.seed)
        self._set_bank(patches[keep].contiguous())

    def _fusion_norms(self, held: list) -> torch.Tensor:
        """Mean and spread of both distances over the held-out normal images' cells: [μ_nn, σ_nn, μ_pos, σ_pos].

        Each term is z-scored with these before the two are added, so neither term's units decide the fused map
        and no label is needed (the held-out images took no part in the bank or the Gaussians).
        """
        return fusion_stats([self._term_cells(f, v) for f, _, v in self.iter_features(held, "held-out normals")])

    def _term_cells(self, feats: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The NN distance and the position distance of these raw features' valid cells, unfused."""
        dist, _, searched = self._nn_maps(feats)
        return dist[valid], position_distances(searched, *self._position)[valid]

    def _with_jitter(self, items: list) -> list:
        """The fit images plus their brightness-jittered copies when `intensity_jitter` (detectors/image/intensity)."""
        if not self.intensity_jitter:
            return items
        from normalcy.detectors.image.intensity import jitter_copies

        return list(items) + jitter_copies(items)

    def _given_labels(self, items: list) -> np.ndarray | None:
        """The given group of each fit image (from `fit(groups=...)`), None unless every one of them has one."""
        given = getattr(self, "_given_modes", None)
        if not given:
            return None
        labels = [given.get(id(getattr(it, "source", it))) for it in items]
        return None if any(g is None for g in labels) else np.array(labels)

    def _fit_modes(self, batches: list, chans: torch.Tensor, given: np.ndarray | None) -> PositionModes | None:
        """One position Gaussian per normal mode of the fit images (None: one population).

        Modes are the given groups (new images go to the nearest group centre, as calibration does) when every
        group has MIN_MODE_IMAGES fit images, else found by k-means on the images' mean standardized features.
        """
        raw = np.concatenate([image_descriptors(f, v) for f, v in batches])
        projection = Projection.fit(raw)
        desc = projection(raw)
        if given is not None:
            names, counts = np.unique(given, return_counts=True)
            if len(names) < 2 or counts.min() < MIN_MODE_IMAGES:
                return None
            groups = GroupModel.nearest_centres(desc, given)
            mode_of = np.searchsorted(np.array(groups.labels), given)
        else:
            mode_of, groups = find_image_modes(desc, seed=self.seed)
        if groups is None:
            return None
        sizes = np.cumsum([0] + [f.shape[0] for f, _ in batches])
        means, precisions = [], []
        for k in range(len(groups.centers)):
            pick = [(f, torch.from_numpy(mode_of[a:b] == k)) for (f, _), a, b in zip(batches, sizes, sizes[1:])]
            mean, precision = self._position_gaussian((f[m] for f, m in pick if m.any()), chans)
            means.append(mean)
            precisions.append(precision)
        empty = torch.zeros(len(means), 4, dtype=torch.float64)  # the normalizers come from the held-out images
        return PositionModes(groups, projection, means, precisions, empty)

    def _mode_norms(self, held: list) -> torch.Tensor:
        """Per mode, the fusion normalizers on the held-out images of that mode (all held-out ones if it has none)."""
        modes = self._modes
        chans = self._position[0]
        nn, pos, owner = [], [[] for _ in range(modes.n)], []
        for feats, _, valid in self.iter_features(held, "held-out normals"):
            dist, _, searched = self._nn_maps(feats)
            nn.append(dist[valid])
            own = torch.from_numpy(modes.assign(searched, valid))
            owner.append(own[:, None, None].expand_as(valid)[valid])
            for k in range(modes.n):
                pos[k].append(position_distances(searched, chans, modes.means[k], modes.precisions[k])[valid])
        nn_all, owner_all = torch.cat(nn).double(), torch.cat(owner)
        rows = []
        for k in range(modes.n):
            sel = owner_all == k if bool((owner_all == k).any()) else torch.ones_like(owner_all, dtype=torch.bool)
            a, b = nn_all[sel], torch.cat(pos[k]).double()[sel]
            rows.append(torch.stack([a.mean(), a.std().clamp(min=1e-12), b.mean(), b.std().clamp(min=1e-12)]))
        return torch.stack(rows)

    def _search_mode(self, n_bank: int) -> str:
        """The backend actually used: `search`, with "auto" = exact up to EXACT_SEARCH_MAX rows, else own IVF
        (its lists searched by faiss when importable; "ivf" = always the pure-torch loop the ONNX export mirrors)."""
        if self.search not in SEARCH_MODES:
            raise ParameterError(f"search must be one of {', '.join(SEARCH_MODES)}; got {self.search!r}")
        if self.bank_storage not in BANK_STORAGE:
            raise ParameterError(f"bank_storage must be 'inline' or 'mmap', got {self.bank_storage!r}")
        if self.search == "auto":
            return "ivf" if n_bank > EXACT_SEARCH_MAX else "exact"
        return self.search

    def _set_bank(self, bank: Bank, centroids: torch.Tensor | None = None,
                  assign: torch.Tensor | None = None) -> None:
        """Install the memory bank (a tensor, or a memory-mapped array) and the index its search mode needs.

        For IVF modes the bank is kept in list order, so the index searches it in place (no second copy).
        """
        mode = self._search_mode(bank.shape[0])
        self._lists = None
        if mode in ("ivf", "faiss-ivf"):
            if centroids is None or assign is None:
                centroids, assign = train_lists(bank, seed=self.seed)
            if not is_list_ordered(assign):
                if not isinstance(bank, torch.Tensor):
                    raise ModelFileError("a memory-mapped bank without list order cannot be indexed in place")
                order = torch.argsort(assign, stable=True)
                bank, assign = bank[order].contiguous(), assign[order]
            self._lists = (centroids, assign)
        self.memory_bank_ = bank
        self._bank_sq = squared_norms(bank)
        self._index: Any = None
        if mode == "ivf":
            # "auto": the same lists and probes searched by faiss when it is importable (same entries, faster)
            self._index = IVFIndex(bank, n_probe=self.n_probe, centroids=centroids, assign=assign,
                                   backend="auto" if self.search == "auto" else "torch")
        elif mode.startswith("faiss-"):
            from normalcy.detectors.image.faiss_index import FaissIndex

            self._index = FaissIndex(bank, mode.removeprefix("faiss-"), n_probe=self.n_probe, centroids=centroids)

    def _nearest(self, q: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact k-NN in the bank (streamed in chunks when the bank is memory-mapped)."""
        if isinstance(self.memory_bank_, torch.Tensor):
            return nearest_neighbors(q, self.memory_bank_, k, self.memory_budget_mb, self._bank_sq)
        return streamed_nearest(q, self.memory_bank_, k, self.memory_budget_mb, self._bank_sq)

    def _bank_rows(self, idx: torch.Tensor) -> torch.Tensor:
        """Bank rows at `idx` (any shape) as a tensor of shape idx.shape + (C,)."""
        if isinstance(self.memory_bank_, torch.Tensor):
            return self.memory_bank_[idx]
        flat = np.array(self.memory_bank_[idx.reshape(-1).numpy()], dtype=np.float32)
        return torch.from_numpy(flat).view(*idx.shape, -1)

    def _nn_maps(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """B×C×h×w raw features → (B×h×w nearest-bank distances, bank indices, the features searched)."""
        if getattr(self, "_stats", None) is not None:
            feats = self._stats.apply(feats, dim=1)
        b, c, h, w = feats.shape
        c = self._main_width(c)
        q = feats[:, :c].permute(0, 2, 3, 1).reshape(-1, c)
        if self._index is not None:
            dist, idx = self._index.search(q)
            dist, idx = dist[:, None], idx[:, None]
        else:
            dist, idx = self._nearest(q)
        return dist[:, 0].view(b, h, w), idx[:, 0].view(b, h, w), feats

    def _fused_maps(self, feats: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """B×h×w anomaly maps (NN distance, fused with the position term when fitted), bank indices, searched feats."""
        maps, idx, searched = self._nn_maps(feats)
        return self._fuse(maps, searched, valid), idx, searched

    def _fuse(self, nn: torch.Tensor, searched: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The NN distance map fused with the position term of these (searched) features, when one was fitted."""
        if getattr(self, "_modes", None) is not None:
            return self._mode_maps(nn, searched, valid)
        if getattr(self, "_fusion", None) is not None:
            mu_nn, sd_nn, mu_pos, sd_pos = (float(v) for v in self._fusion)
            pos = position_distances(searched, *self._position)
            return (nn - mu_nn) / sd_nn + (pos - mu_pos) / sd_pos
        return nn

    def _score(self, items: list) -> ScoreResult:
        """Scores and maps; with several `test_views` each view's NN distance map is flipped back, the maps are
        averaged and fused with the position term of the image as it is, then scored (detectors/image/views.py)."""
        views = check_views(self.test_views)
        if views == ("identity",):
            return super()._score(items)
        if self.reweight:
            raise ParameterError("reweight=True scores one view; use test_views=('identity',)")
        scores, maps = [], []
        loops = [self.iter_features(ViewItems(items, v), f"score ({v})") for v in views]
        nn_only = self._view_terms == "nn"
        if nn_only and "identity" not in views:
            raise ParameterError("test_views must include 'identity' when only the NN term is averaged")
        for batches in zip(*loops):
            total, cells = None, None
            for view, (feats, _, valid) in zip(views, batches):
                nn, _, searched = self._nn_maps(feats)
                if view == "identity":
                    own = (searched, valid)
                part = unflip(nn if nn_only else self._fuse(nn, searched, valid), view)
                back = unflip(valid, view)
                total = part if total is None else total + part
                cells = back if cells is None else cells & back
            mean = total / len(views)
            if nn_only:  # the views' mean NN distance, fused with the position term of the image as it is
                mean = self._fuse(mean, *own)
            scores.append(masked_max(mean, self.score_cells(cells)).double().numpy())
            mean = self._with_context(mean, own[0]) if "identity" in views else mean  # the map only
            maps.extend(restore_maps(mean, batches[0][1], self.canvas, float(self.sigma)))
        return ScoreResult(np.concatenate(scores), maps)

    def _score_features(self, feats: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps, idx, searched = self._fused_maps(feats, valid)
        cells = self.score_cells(valid)
        scores = masked_max(maps, cells)
        if self.reweight:
            scores = self._reweighted(searched, maps, idx, cells, scores)
        return scores, self._with_context(maps, searched)

    # ---- context term (`context=True`, docs/design.md "Fifth pass") ---------------------------------------------
    def _extractor_strides(self) -> tuple[int, ...]:
        """With `context` the stride-32 stage rides along as the last channels of the patch features."""
        strides = super()._extractor_strides()
        return (*strides, CONTEXT_STRIDE) if getattr(self, "context", False) else strides

    def _check_context(self) -> None:
        """`context` needs the pooled positional fusion of the hold-out path and unprojected stage channels."""
        if not getattr(self, "context", False):
            return
        if not self.positional or self.project_dim or self.modes is not None or getattr(self, "crossfit", False):
            raise ParameterError("context=True works with positional=True, project_dim=None, modes=None and "
                                 "crossfit=False")
        if CONTEXT_STRIDE in tuple(self.strides):
            raise ParameterError(f"context=True adds the stride-{CONTEXT_STRIDE} stage; leave it out of strides")

    def _main_width(self, n_channels: int) -> int:
        """Channels of the patch features the bank and the position Gaussian use: all but the context stage's."""
        if not getattr(self, "context", False):
            return n_channels
        return n_channels - self.extractor.net.stage_channels[CONTEXT_STRIDE]

    def _context_cells(self, feats: torch.Tensor) -> torch.Tensor:
        """B×C×h×w standardized features → B×c×h'×w' context stage back on its own (stride-32) grid."""
        ctx = feats[:, self._main_width(feats.shape[1]) :]
        return F.avg_pool2d(ctx, max(1, CONTEXT_STRIDE // min(self.strides)), ceil_mode=True)

    def _fit_context(self, batches: list) -> tuple[torch.Tensor, torch.Tensor]:
        """The context bank: a greedy coreset of the fit images' standardized stride-32 cells, and its squared norms."""
        cells = torch.cat([self._context_cells(self._standardized(f)).permute(0, 2, 3, 1).flatten(0, 2)
                           for f, _ in batches])
        bank = cells[greedy_coreset(cells, self.coreset_ratio, self.coreset_dim, seed=self.seed)].contiguous()
        return bank, squared_norms(bank)

    def _context_distances(self, searched: torch.Tensor) -> torch.Tensor:
        """B×h×w: each stride-32 cell's distance to its nearest normal context cell, upsampled to the map grid."""
        bank, bank_sq = self._context[:2]
        ctx = self._context_cells(searched)
        b, c, h, w = ctx.shape
        dist, _ = nearest_neighbors(ctx.permute(0, 2, 3, 1).reshape(-1, c), bank, 1, self.memory_budget_mb, bank_sq)
        up = F.interpolate(dist[:, :1].reshape(b, 1, h, w), size=searched.shape[-2:], mode="bilinear",
                           align_corners=False)
        return up[:, 0]

    def _context_norms(self, held: list) -> torch.Tensor:
        """Mean and spread of the context distance over the held-out normal images' valid cells: [μ, σ]."""
        loop = self.iter_features(held, "held-out normals")
        return mean_spread([self._context_distances(self._standardized(f))[v] for f, _, v in loop])

    def _with_context(self, maps: torch.Tensor, searched: torch.Tensor) -> torch.Tensor:
        """The fused map plus the z-scored context term, when fitted (the map only: the image score keeps the
        two-term fusion, which the context term lowered on both real sets)."""
        if getattr(self, "_context", None) is None:
            return maps
        mu, sd = (float(v) for v in self._context[2])
        return maps + (self._context_distances(searched) - mu) / sd

    def _mode_maps(self, nn: torch.Tensor, searched: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The fused map with each image's own mode: its Gaussian and its normalizers."""
        modes = self._modes
        own = modes.assign(searched, valid)
        out = torch.empty_like(nn)
        for k in np.unique(own):
            i = torch.from_numpy(np.flatnonzero(own == k))
            mu_nn, sd_nn, mu_pos, sd_pos = (float(v) for v in modes.norms[k])
            pos = position_distances(searched[i], self._position[0], modes.means[k], modes.precisions[k])
            out[i] = (nn[i] - mu_nn) / sd_nn + (pos - mu_pos) / sd_pos
        return out

    def _reweighted(self, feats, maps, nn_idx, valid, scores, neighbours: int = 3) -> torch.Tensor:
        """PatchCore eq. 7: damp the max-patch score when its nearest bank entry sits in a dense region."""
        b, c = feats.shape[:2]
        flat = maps.masked_fill(~valid, float("-inf")).flatten(1).argmax(1)
        q_star = feats.flatten(2)[torch.arange(b), :, flat]  # B×C
        m_star = self._bank_rows(nn_idx.flatten(1)[torch.arange(b), flat])  # B×C
        _, nb = self._nearest(m_star, neighbours)
        d_nb = torch.cdist(q_star[:, None], self._bank_rows(nb))[:, 0]  # B×k (first = m* itself)
        weight = 1.0 - torch.softmax(d_nb, dim=1)[:, 0]  # eq. 7 (softmax = its stable form)
        return weight * scores

    # ---- persistence --------------------------------------------------------------------------------------
    def _state_arrays(self) -> dict[str, np.ndarray]:
        # inline unless this bank went to a sidecar file (fold models of a memory-mapped model are stored inline)
        out = {} if getattr(self, "_bank_file", None) else {"memory_bank": np.asarray(self.memory_bank_)}
        if getattr(self, "_stats", None) is not None:
            out.update(self._stats.arrays())
        if getattr(self, "_fusion", None) is not None:
            chans, mean, precision = self._position
            out.update(position_channels=chans.numpy(), position_mean=mean.numpy(),
                       position_precision=precision.numpy(), fusion_norms=self._fusion.numpy())
        if getattr(self, "_modes", None) is not None:
            out.update(self._modes.arrays())
        if getattr(self, "_context", None) is not None:
            out.update(context_bank=self._context[0].numpy(), context_norms=self._context[2].numpy())
        if self._lists is not None:
            out["ivf_centroids"] = self._lists[0].numpy()
            out["ivf_assign"] = self._lists[1].numpy()
        return out

    def _save_sidecar(self, model_path: Path) -> None:
        """With bank_storage="mmap", write the bank beside the model as `<model>.bank.npy` (called by save)."""
        if self.bank_storage != "mmap":
            self._bank_file = None
            return
        name = Path(model_path).name + ".bank.npy"
        sha = write_bank(Path(model_path).parent / name, self.memory_bank_)
        self._bank_file = {"bank_file": name, "bank_shape": list(self.memory_bank_.shape), "bank_sha256": sha}

    def _state_meta(self) -> dict[str, Any]:
        return {**dict(getattr(self, "_bank_file", None) or {}), **self._canvas_meta()}

    def _load_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self._load_canvas(meta)
        self._stats = ChannelStats.from_arrays(arrays)
        self._position = self._fusion = None
        self._modes = PositionModes.from_arrays(arrays)  # None for models saved without modes: one pooled term
        if "fusion_norms" in arrays:
            to = lambda k, t: torch.from_numpy(np.ascontiguousarray(arrays[k], dtype=t))  # noqa: E731
            self._position = (to("position_channels", np.int64), to("position_mean", np.float32),
                              to("position_precision", np.float32))
            self._fusion = to("fusion_norms", np.float64)
        self._context = None
        if "context_bank" in arrays:
            bank = torch.from_numpy(np.ascontiguousarray(arrays["context_bank"], dtype=np.float32))
            self._context = (bank, squared_norms(bank), torch.from_numpy(np.asarray(arrays["context_norms"])))
        if "bank_file" in meta:  # memory-mapped sidecar: opened read-only, never read whole
            folder = Path(getattr(self, "_model_path", ".")).parent
            bank: Bank = open_bank(folder / meta["bank_file"], meta["bank_shape"], meta["bank_sha256"])
            self._bank_file = {k: meta[k] for k in ("bank_file", "bank_shape", "bank_sha256")}
        else:
            bank = torch.from_numpy(np.ascontiguousarray(arrays["memory_bank"], dtype=np.float32))
        cent = arrays.get("ivf_centroids")
        assign = arrays.get("ivf_assign")
        self._set_bank(bank, None if cent is None else torch.from_numpy(np.ascontiguousarray(cent)),
                       None if assign is None else torch.from_numpy(np.ascontiguousarray(assign)))
