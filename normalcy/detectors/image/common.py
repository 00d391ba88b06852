"""Shared image pipeline: load → square batch → backbone patch features → detector scores → maps per image."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np
import torch
import torch.nn.functional as F

from normalcy.calibration.conformal import calibration_folds
from normalcy.calibration.fitting import score_items
from normalcy.data.progress import progress_bar
from normalcy.detectors.base import Detector, Prediction, ScoreResult
from normalcy.errors import DataError, EmptyFolderError, NotFittedError, ParameterError
from normalcy.features.extractor import PatchFeatureExtractor
from normalcy.features.preprocess import Placement, aspect_canvas, prepare_batch, restore_maps, valid_grid

PREDICT_CHUNK = 64  # images loaded at once by predict_iter (bounds memory on large folders)


def item_path(item: Any) -> str | None:
    """The file path behind an input item, if it has one."""
    if isinstance(item, CachedFeatures):
        return item_path(item.source)
    if isinstance(item, (str, Path)):
        return str(item)
    path = getattr(item, "path", None)
    return str(path) if path is not None else None


def expand_inputs(X: Any) -> list:
    """Accept a folder, a file, a 4-D array, or a sequence of paths/Samples/arrays/PIL images."""
    from normalcy.data import list_images

    if isinstance(X, (str, Path)):
        p = Path(X)
        return list(list_images(p)) if p.is_dir() else [p]
    if isinstance(X, np.ndarray):
        if X.ndim == 4:
            return list(X)
        if X.ndim in (2, 3):
            return [X]
        raise ParameterError(f"an image array must be H×W, H×W×C or N×H×W×C, got shape {X.shape}")
    items = list(X)
    if not items:
        raise EmptyFolderError("no images were given")
    return items


@dataclass
class CachedFeatures:
    """One image's features computed once, reused by every cross-fitting fold (and the final fit)."""

    feats: Any  # C×h×w tensor, or a list of stage tensors when raw
    placement: Placement
    valid: torch.Tensor
    raw: bool
    source: Any


class ImageDetector(Detector):
    """Base for detectors on backbone patch features; subclasses implement `_fit`/`_score_features`."""

    kind = "image"
    raw_features = False  # True: the detector consumes the backbone's stage outputs, not patch features
    border: float = 0.0  # fraction of the grid whose edge cells never decide the image score (see score_cells)

    def fit(self, X: Any, y: Any = None, groups: Any = None, refine: bool = False) -> Self:
        """Fit on normal images; with cross-fitting, features are extracted once and reused by every fold.

        `refine=True` also fits the second, closer look of `predict(..., refine=True)` (detectors/image/refine.py).
        """
        items = self._prepare(X)
        self._fit_canvas(items)
        method, _ = calibration_folds(len(items), float(self.calibration_fraction), float(self.alpha), self.seed)
        if method == "cross-conformal":
            items = self._cache_features(items)
        super().fit(items, y, groups=groups)
        self.refiner_ = None
        if refine:
            from normalcy.detectors.image.refine import fit_refiner

            self.refiner_ = fit_refiner(self, items)
        return self

    def _cache_features(self, items: list) -> list[CachedFeatures]:
        cached = []
        raw = self.raw_features
        for feats, placements, valid in self.iter_features(items, "features", raw=raw):
            for j, pl in enumerate(placements):
                f = [s[j] for s in feats] if raw else feats[j]
                cached.append(CachedFeatures(f, pl, valid[j], raw, items[len(cached)]))
        return cached

    # ---- the network canvas -----------------------------------------------------------------------------
    @property
    def canvas(self) -> tuple[int, int]:
        """(height, width) of the network input: image_size² square, or the fitted aspect canvas ("aspect")."""
        if self.resize_mode != "aspect":
            return int(self.image_size), int(self.image_size)
        fitted = getattr(self, "canvas_", None)
        if fitted is None:
            raise NotFittedError(f"{type(self).__name__} with resize_mode='aspect' picks its canvas at fit time; "
                                 "call fit first")
        return fitted

    @property
    def input_mode(self) -> str:
        """How prepare_batch fits an image to the canvas ("aspect" stretches to the fitted aspect canvas)."""
        return "stretch" if self.resize_mode == "aspect" else self.resize_mode

    def _fit_canvas(self, items: list) -> None:
        """With resize_mode="aspect": a canvas of ~image_size² pixels shaped like the median fit image.

        One rule for every dataset (no labels, no per-set setting): square images keep the square canvas, a set of
        tall 640×250 parts gets a 416×160 canvas instead of being squashed 2.5× along one axis.
        """
        if self.resize_mode != "aspect":
            return
        if items and all(isinstance(it, CachedFeatures) for it in items):  # features were made on a canvas already
            pl = items[0].placement
            self.canvas_ = (pl.inner_h, pl.inner_w)
            return
        aspects = [h / w for h, w in (image_hw(it) for it in items)]
        self.canvas_ = aspect_canvas(float(np.median(aspects)), int(self.image_size))

    def _canvas_meta(self) -> dict[str, Any]:
        """The fitted canvas for the model file (empty unless resize_mode="aspect")."""
        fitted = getattr(self, "canvas_", None)
        return {"canvas": list(fitted)} if self.resize_mode == "aspect" and fitted is not None else {}

    def _load_canvas(self, meta: dict[str, Any]) -> None:
        if "canvas" in meta:
            self.canvas_ = tuple(int(v) for v in meta["canvas"])

    # ---- hooks ------------------------------------------------------------------------------------------
    def _score_features(self, feats: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """B×C×h×w features (+ B×h×w valid cells) → (B image scores, B×h×w patch-score maps or None)."""
        raise NotImplementedError

    def score_cells(self, valid: torch.Tensor) -> torch.Tensor:
        """Cells that decide the image score: valid ones outside the `border` band (maps keep every cell).

        With zero padding inside the CNN, cells on the image edge see padding and their features are atypical:
        on aligned parts the maximum lands there for most normal images. Ignoring a thin band is the classic
        224-of-256 centre crop of PatchCore's evaluation, without throwing the band away from the maps.
        """
        return erode(valid, border_cells(self.border, valid.shape[-2]))

    def _calibrate_untrained(self, X: Any, method: str, warn: bool = True) -> Self:
        """Fit for detectors with nothing to learn (zero-shot): given normal images, their scores become the
        calibration set (`method` names how they were scored); without images there is no calibration."""
        if X is None:
            self._set_calibration("none", [], [])
            self.n_fit_ = 0
            return self
        result = self._score(self._prepare(X))
        self._set_calibration(method, [result.scores], result.maps or [])
        self.n_fit_ = len(result.scores)
        if warn:
            self._warn_if_alpha_unreachable(float(self.alpha))
        return self

    # ---- pipeline ---------------------------------------------------------------------------------------
    def _prepare(self, X: Any) -> list:
        return expand_inputs(X)

    def _item_paths(self, X: Any, n: int) -> list[str | None]:
        return [item_path(it) for it in expand_inputs(X)]

    @property
    def extractor(self) -> PatchFeatureExtractor:
        """The patch-feature extractor for the current parameters (built once, rebuilt if they change)."""
        strides = self._extractor_strides()
        key = (self.backbone, str(self.weights), strides, self.aggregate, self.project_dim, self.seed)
        if getattr(self, "_extractor_key", None) != key:
            self._extractor = PatchFeatureExtractor(
                self.backbone, self.weights, strides, self.aggregate, self.project_dim, self.seed
            )
            self._extractor_key = key
        return self._extractor

    def _extractor_strides(self) -> tuple[int, ...]:
        """The backbone stages the extractor concatenates (a detector may add one it uses apart, e.g. PatchCore's
        context stage)."""
        return tuple(self.strides)

    def iter_features(
        self, items: list, desc: str = "features", raw: bool = False
    ) -> Iterator[tuple[Any, list, torch.Tensor]]:
        """Yield (features, placements, valid cells) per batch, with a progress bar over images.

        With `raw=True` the features are the backbone's stage outputs (a list) instead of patch features.
        """
        from normalcy.data import as_rgb_array

        ext = self.extractor
        size = self.canvas
        bar = progress_bar(total=len(items), desc=desc, unit="img", disable=not self.progress, leave=False)
        try:
            for start in range(0, len(items), int(self.batch_size)):
                chunk = items[start : start + int(self.batch_size)]
                if all(isinstance(c, CachedFeatures) and c.raw == raw for c in chunk):
                    yield self._stack_cached(chunk, raw)
                    bar.update(len(chunk))
                    continue
                chunk = [c.source if isinstance(c, CachedFeatures) else c for c in chunk]
                arrays = [a if isinstance(a, np.ndarray) and a.dtype == np.uint8 and a.ndim == 3
                          and a.shape[2] == 3 else as_rgb_array(a) for a in chunk]
                x, placements = prepare_batch(arrays, size, self.input_mode)
                feats = ext.backbone_only(x) if raw else ext(x)
                grid = tuple((feats[0] if raw else feats).shape[-2:])
                yield feats, placements, valid_grid(placements, size, grid)
                bar.update(len(chunk))
        finally:
            bar.close()

    @staticmethod
    def _stack_cached(chunk: list[CachedFeatures], raw: bool) -> tuple[Any, list, torch.Tensor]:
        if raw:
            feats: Any = [torch.stack([c.feats[i] for c in chunk]) for i in range(len(chunk[0].feats))]
        else:
            feats = torch.stack([c.feats for c in chunk])
        return feats, [c.placement for c in chunk], torch.stack([c.valid for c in chunk])

    def collect_patches(self, items: list, desc: str = "fit features") -> torch.Tensor:
        """All valid patch features of `items` as an N×C float32 matrix."""
        rows = []
        for feats, _, valid in self.iter_features(items, desc):
            flat = feats.permute(0, 2, 3, 1)
            rows.append(flat[valid].contiguous())
        return torch.cat(rows)

    def _score(self, items: list) -> ScoreResult:
        scores, maps = [], []
        have_maps = True
        for feats, placements, valid in self.iter_features(items, "score"):
            img_scores, patch_maps = self._score_features(feats, valid)
            scores.append(img_scores.double().numpy())
            if patch_maps is None:
                have_maps = False
            else:
                maps.extend(restore_maps(patch_maps, placements, self.canvas, float(self.sigma)))
        return ScoreResult(np.concatenate(scores), maps if have_maps else None)

    # ---- predictions that lose nothing ------------------------------------------------------------------
    def predict_iter(
        self, X: Any, alpha: float | None = None, pixel_fpr: float | None = None, chunk: int = PREDICT_CHUNK,
        groups: Any = None, refine: bool = False,
    ) -> Iterator[Prediction]:
        """Predictions in input order; an unreadable image yields a `status="error"` row, never a crash.

        `refine=True`: images near alpha get a second, closer look (a model fitted with `fit(..., refine=True)`).
        """
        from normalcy.data import as_rgb_array

        self.check_fitted()
        items = self._prepare(X)
        for start in range(0, len(items), chunk):
            part = items[start : start + chunk]
            arrays, errors = [], {}
            for i, it in enumerate(part):
                try:
                    arrays.append(as_rgb_array(it))
                except DataError as exc:
                    errors[i] = str(exc)
            kw = {} if groups is None else {"groups": [g for i, g in enumerate(list(groups)[start : start + chunk])
                                                     if i not in errors]}  # overrides of decide may not take groups
            ok = self.decide(score_items(self, arrays), alpha, pixel_fpr, **kw) if arrays else []
            if refine and ok:
                from normalcy.detectors.image.refine import refine_predictions

                ok = refine_predictions(self, arrays, ok, alpha, pixel_fpr)
            ok_iter = iter(ok)
            for i, it in enumerate(part):
                if i in errors:
                    yield Prediction(path=item_path(it), status="error", error=errors[i])
                else:
                    pred = next(ok_iter)
                    pred.path = item_path(it)
                    yield pred

    def predict(self, X: Any, alpha: float | None = None, pixel_fpr: float | None = None,
                groups: Any = None, refine: bool = False) -> list[Prediction]:
        """Calibrated predictions for every input image (errors become rows, see `predict_iter`)."""
        return list(self.predict_iter(X, alpha, pixel_fpr, refine=refine,
                                      **({} if groups is None else {"groups": groups})))


def image_hw(item: Any) -> tuple[int, int]:
    """(height, width) of an input item, from the file header when it is a file (no full decode)."""
    from PIL import Image

    from normalcy.data import as_rgb_array

    if isinstance(item, CachedFeatures):
        return item.placement.height, item.placement.width
    if isinstance(item, np.ndarray):
        return int(item.shape[0]), int(item.shape[1])
    if isinstance(item, Image.Image):
        return item.height, item.width
    path = item_path(item)
    if path is not None:
        try:
            with Image.open(path) as img:
                w, h = img.size
                swap = img.getexif().get(0x0112, 1) in (5, 6, 7, 8)  # EXIF rotation by 90°: decoded upright
            return (w, h) if swap else (h, w)
        except Exception:  # unreadable header: the decoder below raises the project's own error
            pass
    arr = as_rgb_array(item)
    return int(arr.shape[0]), int(arr.shape[1])


def masked_max(maps: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per-image maximum over valid cells only (padding never decides an image score)."""
    return maps.masked_fill(~valid, float("-inf")).flatten(1).max(dim=1).values


def border_cells(border: float, grid: int) -> int:
    """Width in cells of the border band for a fraction `border` of a `grid`-cell side."""
    if not 0.0 <= float(border) < 0.5:
        raise ParameterError(f"border must be a fraction in [0, 0.5), got {border}")
    return int(round(float(border) * grid))


def erode(valid: torch.Tensor, cells: int) -> torch.Tensor:
    """Shrink B×h×w valid masks by `cells` on every side (never to nothing: falls back to the mask itself)."""
    if cells <= 0:
        return valid
    outside = F.pad(~valid[:, None], (cells,) * 4, value=True).float()  # off the canvas counts as invalid
    inner = F.max_pool2d(outside, 2 * cells + 1, stride=1)[:, 0] < 0.5
    empty = ~inner.flatten(1).any(1)
    inner[empty] = valid[empty]
    return inner
