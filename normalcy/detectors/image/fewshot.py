"""Few-shot detection from k normal references (cf. "Search is All You Need for Few-shot Anomaly Detection").

Each query patch is scored by its distance to the nearest patch of k normal reference images, whose bank is
enlarged with flipped/rotated views of the references. Features are the backbone's stride-8 and stride-16 stages
(multi-stage, locally aggregated) computed on a reflect-padded canvas, so cells at the image border carry no
zero-padding artefacts. The image score ignores a thin border band (the classic 224-of-256 centre crop) and is the
mean of the 3 highest cells (`top_cells`) minus the median cell (docs/fewshot.md, fifth pass).

Calibration: with k = 1 no normal image is left to calibrate on, so p-values are NaN and nothing is flagged (the
base class warns); with k >= 2 the references are cross-fitted (each scored by a model of the others), and the
smallest reachable p-value is 1/(k+1).

This module also holds what the other few-shot and zero-shot detectors share: views, padded features, reference
sampling and the image-score border rule.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from normalcy.calibration.conformal import SUSPICIOUS_FACTOR, check_alpha
from normalcy.calibration.transfer import MIN_CONFORMAL, TransferTable, load_table, map_statistic
from normalcy.data.progress import progress_bar
from normalcy.detectors.base import Prediction, ScoreResult
from normalcy.detectors.image.common import CachedFeatures, ImageDetector, border_cells, erode, masked_max
from normalcy.detectors.image.intensity import gain_normalize
from normalcy.detectors.image.search import greedy_coreset, nearest_neighbors
from normalcy.errors import ParameterError
from normalcy.features.extractor import PaddedExtractor, pad_cells
from normalcy.features.preprocess import Placement, gaussian_blur, prepare_batch, restore_maps, valid_grid

AUGMENTS = ("none", "flip", "dihedral")
ASPECTS = ("keep", "square")
PRIOR_TABLE = Path(__file__).with_name("data") / "fewshot_prior_transfer.json"  # transfer table with `prior`
MAX_ASPECT = 4.0  # longest canvas side, in multiples of image_size (very long strips are capped, then stretched)


def canvas_shape(height: int, width: int, size: int, aspect: str, step: int) -> tuple[int, int]:
    """Network canvas (H, W) for an image: `size`×`size` ("square"), or its own aspect with the short side `size`.

    "keep" matters for long strips (KolektorSDD: 640×250): squashing them into a square shrinks thin cracks by 2.5×
    along one axis. Sides are rounded to multiples of `step` (the coarsest stride) so every stage's grid is exact.
    """
    if aspect not in ASPECTS:
        raise ParameterError(f"aspect must be one of {ASPECTS}, got {aspect!r}")
    if aspect == "square" or height == width:
        return size, size
    scale = size / min(height, width)
    cap = int(MAX_ASPECT * size)

    def side(n: int) -> int:
        return int(min(cap, max(step, round(n * scale / step) * step)))

    return side(height), side(width)


def item_hw(item: Any) -> tuple[int, int]:
    """(height, width) of an input item without decoding its pixels when it is a file."""
    from PIL import Image

    if isinstance(item, CachedFeatures):
        item = item.source
    if isinstance(item, np.ndarray):
        return int(item.shape[0]), int(item.shape[1])
    path = item if isinstance(item, (str, Path)) else getattr(item, "path", None)
    if path is not None:
        with Image.open(path) as im:
            return int(im.size[1]), int(im.size[0])
    if hasattr(item, "size") and hasattr(item, "mode"):  # a PIL image
        return int(item.size[1]), int(item.size[0])
    from normalcy.data import as_rgb_array

    a = as_rgb_array(item)
    return int(a.shape[0]), int(a.shape[1])


def prepare_canvas(images: Sequence[np.ndarray], shape: tuple[int, int]) -> tuple[torch.Tensor, list[Placement]]:
    """H×W×3 uint8 arrays stretched to one canvas `shape` (H, W): B×3×H×W tensor in [0, 1] and their Placements."""
    from PIL import Image

    ch, cw = shape
    out = torch.empty((len(images), 3, ch, cw), dtype=torch.float32)
    placements = []
    for i, img in enumerate(images):
        h, w = img.shape[:2]
        if (h, w) != (ch, cw):
            img = np.array(Image.fromarray(img).resize((cw, ch), Image.Resampling.BILINEAR))
        out[i] = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div_(255.0)
        placements.append(Placement(h, w, 0, 0, ch, cw))
    return out, placements


def sample_references(items: Sequence, shots: int, seed: int = 0) -> list:
    """`shots` items drawn without replacement with a seeded generator (ParameterError if too few)."""
    if not isinstance(shots, (int, np.integer)) or isinstance(shots, bool) or shots < 1:
        raise ParameterError(f"shots must be a positive integer, got {shots!r}")
    if shots > len(items):
        raise ParameterError(f"asked for {shots} reference images but only {len(items)} normal images are available")
    idx = np.sort(np.random.default_rng(seed).choice(len(items), int(shots), replace=False))
    return [items[int(i)] for i in idx]


def views(x: torch.Tensor, augment: str) -> torch.Tensor:
    """Stack the flip/rotation views of a B×…×S×S batch (view-major): 1, 4 or 8 views per image."""
    if augment not in AUGMENTS:
        raise ParameterError(f"augment must be one of {AUGMENTS}, got {augment!r}")
    out = [x]
    if augment in ("flip", "dihedral"):
        out += [x.flip(-1), x.flip(-2), x.flip(-1).flip(-2)]
    if augment == "dihedral":
        t = x.transpose(-1, -2)
        out += [t, t.flip(-1), t.flip(-2), t.flip(-1).flip(-2)]
    return torch.cat(out)


def robust_z(maps: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """B×h×w maps → (map − median) / (1.4826·MAD) per image over its valid cells: a scale set by the image itself."""
    out = torch.empty_like(maps, dtype=torch.float32)
    for i in range(maps.shape[0]):
        x = maps[i][valid[i]].float()
        med = x.median()
        mad = (x - med).abs().median() * 1.4826
        out[i] = (maps[i].float() - med) / mad.clamp(min=1e-6 * float(med.abs()) + 1e-12)
    return out


def aggregate_stages(stages: Sequence[torch.Tensor], size: int, crop: int = 0) -> torch.Tensor:
    """Average each stage over a `size`×`size` neighbourhood, upsample to the finest grid, concatenate, crop."""
    target = stages[0].shape[-2:]
    parts = []
    for f in stages:
        if size > 1:
            p = size // 2
            f = F.avg_pool2d(F.pad(f, (p, p, p, p), mode="replicate"), size, stride=1)
        if f.shape[-2:] != target:
            f = F.interpolate(f, size=target, mode="bilinear", align_corners=False)
        parts.append(f)
    feats = torch.cat(parts, dim=1)
    return feats[..., crop : feats.shape[-2] - crop, crop : feats.shape[-1] - crop].contiguous()


class FewShot(ImageDetector):
    """Nearest-neighbour distance of each query patch to the augmented patches of k normal references."""

    name = "fewshot"
    min_fit_items = 1
    # files saved before these existed scored raw images with the max rule: they load and score as fitted
    OLD_FILE_PARAMS = {"intensity": None, "top_cells": 1}

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
        prior: str | None = None,
        intensity: str | None = "auto",
        top_cells: int = 3,
        top_fraction: float = 0.0,
    ) -> None:
        self._store_params(locals())

    # ---- features ---------------------------------------------------------------------------------------
    def _padded(self) -> PaddedExtractor:
        """The extractor on a canvas reflect-padded by `pad` of the image size (whole cells of the finest stride)."""
        stride = min(self.strides)
        return PaddedExtractor(self.extractor, pad_cells(self.pad, int(self.image_size), stride), stride)

    def _pad_cells(self) -> int:
        """Reflect padding added around the canvas, in cells of the finest stride."""
        return self._padded().cells

    def _features(self, x: torch.Tensor, raw: bool = False) -> Any:
        """Patch features (or the padded canvas's raw stages) of a B×3×S×S batch, on a reflect-padded canvas."""
        padded = self._padded()
        return padded.backbone_only(padded.pad(x)) if raw else padded(x)

    def _canvas_shape(self, height: int, width: int) -> tuple[int, int]:
        """Canvas of one image: its own aspect (`aspect="keep"`, stretch mode) or the square `image_size`."""
        aspect = self.aspect if self.resize_mode == "stretch" else "square"
        return canvas_shape(height, width, int(self.image_size), aspect, max(self.strides))

    def _canvas_batch(self, arrays: list[np.ndarray], shape: tuple[int, int], augment: str
                      ) -> tuple[torch.Tensor, list[Placement], torch.Tensor]:
        """Images on one canvas: pixels (with flip/rotation views), placements and valid feature cells."""
        size, stride = int(self.image_size), min(self.strides)
        if shape == (size, size):
            x, placements = prepare_batch(arrays, size, self.resize_mode)
            valid = valid_grid(placements, size, (-(-size // stride),) * 2)
        else:
            x, placements = prepare_canvas(arrays, shape)
            valid = torch.ones((len(arrays), shape[0] // stride, shape[1] // stride), dtype=torch.bool)
            if augment == "dihedral":  # a quarter turn of a strip is another canvas: flips only
                augment = "flip"
        if augment != "none":
            x, valid = views(x, augment), views(valid, augment)
        return x, placements, valid

    def iter_features(
        self, items: list, desc: str = "features", raw: bool = False, augment: str = "none"
    ) -> Iterator[tuple[Any, list, torch.Tensor]]:
        """Yield (features, placements, valid cells) per batch of same-canvas images, in input order.

        `augment` stacks flip/rotation views (view-major). With `aspect="keep"` consecutive images of one canvas
        shape share a batch; an image of another shape starts a new one.
        """
        from normalcy.data import as_rgb_array

        if not raw and self._uses_prior():
            yield from self._prior_features(items, desc, augment)
            return
        bar = progress_bar(total=len(items), desc=desc, unit="img", disable=not self.progress, leave=False)
        try:
            for start in range(0, len(items), int(self.batch_size)):
                chunk = items[start : start + int(self.batch_size)]
                arrays = [as_rgb_array(getattr(c, "source", c) if isinstance(c, CachedFeatures) else c)
                          for c in chunk]
                if self._gain():
                    arrays = [gain_normalize(a) for a in arrays]
                shapes = [self._canvas_shape(*a.shape[:2]) for a in arrays]
                i = 0
                while i < len(arrays):
                    j = i + 1
                    while j < len(arrays) and shapes[j] == shapes[i]:
                        j += 1
                    x, placements, valid = self._canvas_batch(arrays[i:j], shapes[i], augment)
                    yield self._features(x, raw), placements, valid
                    i = j
                bar.update(len(chunk))
        finally:
            bar.close()

    def _prior_features(self, items: list, desc: str, augment: str
                        ) -> Iterator[tuple[torch.Tensor, list, torch.Tensor]]:
        """Batches whose features carry the prior head's logit map as one extra, last channel (one backbone pass)."""
        from normalcy.detectors.image.zeroshot import SELF_FRACTIONS, head_inputs

        head, meta = self.prior_head()
        cells, ext = self._pad_cells(), self.extractor
        splits = [int(ext.net.stage_channels[s]) for s in ext.strides]
        for stages, placements, valid in FewShot.iter_features(self, items, desc, raw=True, augment=augment):
            feats = aggregate_stages(stages, int(self.aggregate), cells)
            if ext.projection is not None:
                feats = torch.einsum("bchw,cd->bdhw", feats, ext.projection)
            z = aggregate_stages(stages, int(meta["features"]["aggregate"]), cells)
            logit = head.maps(head_inputs(z, valid, splits, meta.get("fractions", SELF_FRACTIONS), meta.get("wide", 0)))
            yield torch.cat([feats, logit[:, None]], dim=1).contiguous(), placements, valid

    def restore(self, maps: torch.Tensor, placements: Sequence[Placement]) -> list[np.ndarray]:
        """Feature-grid maps (B×h×w, one canvas) → smoothed maps at each image's own size."""
        size, pl0 = int(self.image_size), placements[0]
        if (pl0.top, pl0.left) != (0, 0) or (pl0.inner_h, pl0.inner_w) == (size, size):
            return restore_maps(maps, placements, size, float(self.sigma))
        ch, cw = pl0.inner_h, pl0.inner_w
        up = F.interpolate(maps[:, None].float(), size=(ch, cw), mode="bilinear", align_corners=False)[:, 0]
        up = gaussian_blur(up, float(self.sigma))
        out = []
        for m, pl in zip(up, placements):
            if (pl.height, pl.width) != (ch, cw):
                m = F.interpolate(m[None, None], size=(pl.height, pl.width), mode="bilinear", align_corners=False)[0, 0]
            out.append(m.contiguous().numpy().astype(np.float32, copy=False))
        return out

    def score_cells(self, valid: torch.Tensor) -> torch.Tensor:
        """Valid cells outside the border band; the band's width is a fraction of the grid's shorter side."""
        return erode(valid, border_cells(self.border, min(valid.shape[-2:])))

    def _score(self, items: list) -> ScoreResult:
        scores, maps = [], []
        for feats, placements, valid in self.iter_features(items, "score"):
            img_scores, patch_maps = self._score_features(feats, valid)
            scores.append(img_scores.double().numpy())
            maps.extend(self.restore(patch_maps, placements))
        return ScoreResult(np.concatenate(scores), maps)

    def _cache_features(self, items: list) -> list:
        """No feature cache across folds: references are augmented in pixel space, so folds re-extract."""
        return items

    def reference_features(self, items: list) -> tuple[torch.Tensor, torch.Tensor]:
        """Features (V×C×h×w) and valid cells (V×h×w) of every augmented view of the references (one canvas)."""
        feats, valid = [], []
        for f, _, v in self.iter_features(items, "references", augment=self.augment):
            feats.append(f[:, :-1] if self._uses_prior() else f)
            valid.append(v)
        return torch.cat(feats), torch.cat(valid)

    def image_scores(self, maps: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Mean of the n highest scored cells (n = 1: the max), minus the image's median cell when `center`.

        n = max(`top_cells`, `top_fraction` × the image's scored cells): one stray cell decides less when a few must
        agree. Subclasses have neither parameter and take the max.
        """
        cells = self.score_cells(valid)
        n, frac = getattr(self, "top_cells", 1), getattr(self, "top_fraction", 0.0)
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
            raise ParameterError(f"top_cells must be a positive integer, got {n!r}")
        if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0.0 <= float(frac) < 1.0:
            raise ParameterError(f"top_fraction must be a fraction in [0, 1), got {frac!r}")
        per_image = (cells.flatten(1).sum(1).double() * float(frac)).round().long().clamp(min=int(n))
        if int(per_image.max()) == 1:
            scores = masked_max(maps, cells)
        else:
            top = maps.masked_fill(~cells, float("-inf")).flatten(1)
            top = top.topk(min(int(per_image.max()), top.shape[1]), dim=1).values
            # each image's own n; fewer scored cells than n: average the ones there are
            keep = torch.isfinite(top) & (torch.arange(top.shape[1]) < per_image[:, None])
            scores = top.masked_fill(~keep, 0.0).sum(1) / keep.sum(1).clamp(min=1)
        if self.center:
            flat = maps.masked_fill(~valid, float("nan")).flatten(1)
            scores = scores - flat.nanmedian(dim=1).values
        return scores

    # ---- fit / score --------------------------------------------------------------------------------------
    def _fit(self, items: list) -> None:
        batches = self.iter_features(items, "references", augment=self.augment)
        cut = -1 if self._uses_prior() else None  # the prior's logit channel is not a patch feature
        patches = [f[:, :cut].permute(0, 2, 3, 1)[v] for f, _, v in batches]
        self._set_bank(torch.cat(patches))

    def _set_bank(self, patches: torch.Tensor) -> None:
        """Keep the patches (greedy coreset down to `max_bank` rows when there are more)."""
        if int(self.max_bank) < 1:
            raise ParameterError(f"max_bank must be a positive integer, got {self.max_bank}")
        if patches.shape[0] > int(self.max_bank):
            keep = greedy_coreset(patches, int(self.max_bank) / patches.shape[0], seed=self.seed)
            patches = patches[keep]
        self.bank_ = patches.contiguous()
        self._bank_sq = self.bank_.pow(2).sum(1)

    def nearest(self, feats: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Distances and indices (B·h·w × k) of each cell's k nearest bank patches."""
        c = feats.shape[1]
        return nearest_neighbors(feats.permute(0, 2, 3, 1).reshape(-1, c), self.bank_, k,
                                 int(self.memory_budget_mb), self._bank_sq)

    def _score_features(self, feats: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, _, h, w = feats.shape
        if not self._uses_prior():
            maps = self.nearest(feats)[0][:, 0].view(b, h, w)
            return self.image_scores(maps, valid), maps
        dist = self.nearest(feats[:, :-1])[0][:, 0].view(b, h, w)
        maps = robust_z(dist.clamp(min=1e-6).log(), valid) + robust_z(feats[:, -1], valid)
        return self.image_scores(maps, valid), maps

    def _gain(self) -> bool:
        """Whether images are gain-normalized first, as PatchCore's default (docs/fewshot.md, fourth pass):
        "gain" / None force it on / off, "auto" asks `_auto_gain`; subclasses without `intensity`: no."""
        intensity = getattr(self, "intensity", None)
        if intensity not in (None, "gain", "auto"):
            raise ParameterError(f"intensity must be 'auto', 'gain' or None, got {intensity!r}")
        return self._auto_gain() if intensity == "auto" else intensity == "gain"

    def _auto_gain(self) -> bool:
        """"auto": yes without a zero-shot `prior`; with one, as its head was trained (`intensity` in the head's
        meta; heads without it saw raw images), since one backbone pass feeds both."""
        return not self._uses_prior() or self.prior_head()[1].get("intensity") == "gain"

    # ---- the zero-shot prior ---------------------------------------------------------------------------------
    def _uses_prior(self) -> bool:
        """Whether the zero-shot head's map is fused into the scores (`prior` set; subclasses have no `prior`)."""
        return getattr(self, "prior", None) is not None

    def prior_head(self) -> tuple[Any, dict[str, Any]]:
        """The zero-shot head named by `prior` ("builtin" or a path) and its meta, checked against the features.

        The head reads the backbone's stages aggregated at its own size (the few-shot features keep `aggregate`),
        so only the backbone and strides must match.
        """
        if getattr(self, "_prior_src", None) == self.prior and getattr(self, "prior_", None) is not None:
            return self.prior_, self.prior_meta_
        from normalcy.detectors.image.zeroshot import BUILTIN_HEAD, load_head

        path = BUILTIN_HEAD if self.prior == "builtin" else Path(str(self.prior)).expanduser()
        head, meta = load_head(path)
        self._check_prior(meta, path)
        self.prior_, self.prior_meta_, self._prior_src = head, meta, self.prior
        return head, meta

    def _check_prior(self, meta: dict[str, Any], source: Any) -> None:
        """ParameterError unless the head was trained on this backbone and these strides."""
        feats = meta.get("features", {})
        want = {"backbone": self.backbone, "strides": sorted(int(s) for s in self.strides)}
        got = {"backbone": feats.get("backbone"), "strides": sorted(int(s) for s in feats.get("strides", []))}
        if got != want or "aggregate" not in feats:
            raise ParameterError(f"prior head {source} was trained on features {feats}, but this detector extracts "
                                 f"{want}; pass prior=None or a head trained for these settings "
                                 "(benchmarks/train_zeroshot_head.py)")

    # ---- decisions with few references ---------------------------------------------------------------------
    def transfer(self) -> TransferTable | None:
        """The transfer table used for decisions (fewer than MIN_CONFORMAL references and a table for this detector).

        `transfer_table`: "builtin" (the packaged table; with `prior`, the packaged table of fused maps), a JSON path
        (benchmarks/fewshot_transfer.py), or None (off: conformal p-values only, NaN with one reference).
        """
        src = getattr(self, "transfer_table", None)
        if src is None or getattr(self, "n_fit_", MIN_CONFORMAL) >= MIN_CONFORMAL:
            return None
        if getattr(self, "_transfer_src", object()) != (src, self._uses_prior()):
            if src != "builtin":
                self._transfer_table = load_table(self.name, src)
            elif self._uses_prior():  # fused maps have their own statistics, hence their own packaged table
                self._transfer_table = load_table(self.name, PRIOR_TABLE) if PRIOR_TABLE.is_file() else None
            else:
                self._transfer_table = load_table(self.name)
            self._transfer_src = (src, self._uses_prior())
            if self._transfer_table is None:
                warnings.warn(f"{type(self).__name__}: no transfer table for {self.name!r} in {src}: decisions with "
                              f"fewer than {MIN_CONFORMAL} references fall back to conformal p-values", UserWarning,
                              stacklevel=3)
        return self._transfer_table

    def _warn_if_alpha_unreachable(self, alpha: float) -> None:
        if self.transfer() is None:
            return super()._warn_if_alpha_unreachable(alpha)
        warnings.warn(f"{type(self).__name__}: fitted on {self.n_fit_} references (< {MIN_CONFORMAL}): decisions use a "
                      "score normalization learned on other datasets (calibration='transfer'), not a conformal "
                      "guarantee; the realized false-alarm rate may differ from alpha", UserWarning, stacklevel=3)

    def decide(self, result: ScoreResult, alpha: float | None = None, pixel_fpr: float | None = None,
               paths: list[str | None] | None = None, groups: Any = None) -> list[Prediction]:
        """Conformal decisions; with fewer than MIN_CONFORMAL references, transfer-normalized ones (`transfer`)."""
        preds = super().decide(result, alpha, pixel_fpr, paths, groups=groups)
        table = self.transfer()
        if table is None or result.maps is None:
            return preds
        alpha = check_alpha(self.alpha if alpha is None else alpha)
        k = int(self.n_fit_)
        stats = np.array([map_statistic(m, float(self.border)) for m in result.maps])
        p = table.p_values(stats, k)
        z_t = table.threshold(alpha, k)
        for pred, pv, amap in zip(preds, p, result.maps):
            flagged = bool(pv <= alpha)
            pred.p_value, pred.is_anomaly, pred.calibration = float(pv), flagged, "transfer"
            pred.p_low = pred.p_high = float("nan")  # no conformal interval: the table's error is unknown
            pred.decision = "anomalous" if flagged else "normal"
            pred.n_calibration = int(table.normals[table.nearest_k(k)].size)
            pred.calibration_note = (f"transfer: p-value from normal images of other datasets ({k} references < "
                                     f"{MIN_CONFORMAL}); not conformally calibrated")
            pred.severity = "anomalous" if flagged else "suspicious" if pv <= SUSPICIOUS_FACTOR * alpha else "normal"
            pred.mask = np.zeros(amap.shape, dtype=bool)
            if flagged and np.isfinite(z_t):  # pixels standing out as far as a flagged image's worst spot must
                med = float(np.median(amap))
                pred.mask = amap > med + z_t * float(np.median(np.abs(amap - med)))
        return preds

    # ---- persistence --------------------------------------------------------------------------------------
    def _state_arrays(self) -> dict[str, np.ndarray]:
        arrays = {"bank": self.bank_.numpy()}
        if self._uses_prior():  # the head travels with the model file
            from normalcy.detectors.training import module_arrays

            arrays.update(module_arrays("prior", self.prior_head()[0]))
        return arrays

    def _state_meta(self) -> dict[str, Any]:
        return {**super()._state_meta(), "prior_meta": self.prior_head()[1] if self._uses_prior() else None}

    def _load_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.bank_ = torch.from_numpy(np.ascontiguousarray(arrays["bank"], dtype=np.float32))
        self._bank_sq = self.bank_.pow(2).sum(1)
        if "prior_meta" not in meta:  # a model saved before `prior` existed scored without it: keep it that way
            self.prior = None
        elif meta["prior_meta"] is not None:
            from normalcy.detectors.image.zeroshot import PatchHead
            from normalcy.detectors.training import load_module

            w1 = arrays["prior.w1"]
            self._check_prior(meta["prior_meta"], "in the model file")
            self.prior_ = load_module("prior", PatchHead(int(w1.shape[0]), int(w1.shape[1])), arrays)
            self.prior_meta_, self._prior_src = dict(meta["prior_meta"]), self.prior
