"""A second, closer look at borderline images (issue 17, coarse-to-fine as in UGPL): overlapping tiles at a higher
resolution, scored by a fine model of the same kind fitted on tiles of the training images.

Which images: those whose coarse p-value falls in a band around alpha, ``alpha * BAND[0] < p <= alpha * BAND[1]``
(the "suspicious" zone and the lower part of the flagged zone, where the Clopper-Pearson interval of
`calibration.uncertainty` straddles alpha for typical calibration sizes). Images outside the band keep their coarse
decision.

Why the refined p-value is still a conformal p-value: every calibration image is also refined at fit time, and
the decision uses one score for every item, compared lexicographically: (tier, value), with tier 2 above the band,
tier 1 in it, tier 0 below it, and value = the coarse score outside the band and, in it, a ranking that uses the
fine score (`Refiner.rule`: the smaller or the sum of the coarse and fine exceedance counts, or the fine score
alone; measured on Magnetic Tile in docs/calibration.md, where it lowers TPR: opt-in). An item's tier
is read from its coarse exceedance count among the *other* items (the calibration scores, plus the new item for a
calibration score), a symmetric rule, so the new item and the calibration items stay exchangeable and
``p = (1 + #{cal: S_cal >= S_new}) / (n_cal + 1)`` keeps ``P(p <= alpha) <= alpha`` exactly. Outside the band
this p equals the coarse p; inside the band the images are re-ranked by their fine score only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from normalcy.calibration.conformal import Calibration, check_alpha, exceedances
from normalcy.calibration.uncertainty import decision_status, p_interval
from normalcy.errors import ParameterError

BAND = (0.2, 4.0)  # refine when alpha * BAND[0] < coarse p <= alpha * BAND[1]
GRID = (2, 2)  # tiles per column and per row
OVERLAP = 0.25  # fraction of a tile shared with its neighbour (covers the border band the tile score ignores)
RULES = ("min", "fine", "sum")


# ---- tiles ------------------------------------------------------------------------------------------------------
def axis_spans(n: int, k: int, overlap: float = OVERLAP) -> list[tuple[int, int]]:
    """`k` windows [start, end) of equal length covering 0..n, neighbours sharing about `overlap` of a window."""
    if k < 1 or n < 1:
        raise ParameterError(f"tiles need a positive size and count, got n={n}, k={k}")
    if not 0.0 <= overlap < 1.0:
        raise ParameterError(f"tile overlap must be a fraction in [0, 1), got {overlap}")
    if k == 1:
        return [(0, n)]
    size = min(n, math.ceil(n / (k - (k - 1) * overlap)))
    starts = [round(i * (n - size) / (k - 1)) for i in range(k)]
    return [(s, s + size) for s in starts]


def owned_spans(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The part of each window that owns its pixels after merging: overlaps are cut in their middle."""
    cuts = [spans[0][0]]
    for (_, end), (start, _) in zip(spans[:-1], spans[1:]):
        cuts.append(max(cuts[-1], min((start + end) // 2, end)))
    cuts.append(spans[-1][1])
    return list(zip(cuts[:-1], cuts[1:]))


def tile_boxes(height: int, width: int, grid: tuple[int, int] = GRID,
               overlap: float = OVERLAP) -> list[tuple[int, int, int, int]]:
    """(top, bottom, left, right) of every tile, row by row."""
    rows, cols = axis_spans(height, grid[0], overlap), axis_spans(width, grid[1], overlap)
    return [(t, b, le, r) for t, b in rows for le, r in cols]


def cut_tiles(image: np.ndarray, grid: tuple[int, int] = GRID, overlap: float = OVERLAP) -> list[np.ndarray]:
    """The overlapping tiles of one H×W×C image (views, row by row)."""
    return [image[t:b, le:r] for t, b, le, r in tile_boxes(image.shape[0], image.shape[1], grid, overlap)]


def merge_tiles(maps: list[np.ndarray], height: int, width: int, grid: tuple[int, int] = GRID,
                overlap: float = OVERLAP) -> np.ndarray:
    """One H×W map from the tiles' maps: every pixel comes from exactly one tile (the one whose centre is nearest)."""
    rows, cols = axis_spans(height, grid[0], overlap), axis_spans(width, grid[1], overlap)
    own_r, own_c = owned_spans(rows), owned_spans(cols)
    out = np.empty((height, width), dtype=np.float32)
    k = 0
    for (t, _), (ot, ob) in zip(rows, own_r):
        for (le, _), (ol, orr) in zip(cols, own_c):
            out[ot:ob, ol:orr] = maps[k][ot - t : ob - t, ol - le : orr - le]
            k += 1
    return out


# ---- the fine model ---------------------------------------------------------------------------------------------
@dataclass
class Refiner:
    """The fine model and the coarse/fine score pair of every calibration image (in the same order)."""

    fine: Any
    coarse_cal: np.ndarray
    fine_cal: np.ndarray
    grid: tuple[int, int] = GRID
    overlap: float = OVERLAP
    band: tuple[float, float] = BAND
    pixel_quantiles: np.ndarray | None = None
    rule: str = "min"  # in the band: rank by the smaller ("min") or the sum ("sum") of both ranks, or the fine score

    def fine_scores(self, images: list[np.ndarray], maps: bool = False) -> tuple[np.ndarray, list[np.ndarray]]:
        """Each image's refined score (largest tile score) and, with `maps`, its merged tile map."""
        tiles, owner = [], []
        for i, img in enumerate(images):
            for tile in cut_tiles(img, self.grid, self.overlap):
                tiles.append(tile)
                owner.append(i)
        if not tiles:
            return np.empty(0), []
        result = self.fine._score(tiles)
        owner_arr = np.asarray(owner)
        scores = np.array([result.scores[owner_arr == i].max() for i in range(len(images))], dtype=np.float64)
        merged = []
        if maps and result.maps is not None:
            for i, img in enumerate(images):
                merged.append(merge_tiles([result.maps[j] for j in np.flatnonzero(owner_arr == i)],
                                          img.shape[0], img.shape[1], self.grid, self.overlap))
        return scores, merged

    def p_values(self, coarse: np.ndarray, fine: np.ndarray) -> np.ndarray:
        """Conformal p-values of the (tier, value) score for items in the band (see the module docstring)."""
        if self.rule not in RULES:
            raise ParameterError(f"refine rule must be one of {RULES}, got {self.rule!r}")
        c_cal, f_cal = self.coarse_cal, self.fine_cal
        n = c_cal.size
        loo = exceedances(c_cal, c_cal) - 1  # each calibration score's count among the other calibration scores
        loo_f = exceedances(f_cal, f_cal) - 1
        out = np.empty(len(coarse))
        for j, (s, f) in enumerate(zip(np.asarray(coarse, dtype=np.float64), np.asarray(fine, dtype=np.float64))):
            count_new = exceedances(c_cal, np.array([s]))[0]
            tier_new = self._tier(count_new)
            counts = loo + (s >= c_cal)
            tiers = self._tier(counts)
            above = (tiers > tier_new).sum()
            same = tiers == tier_new
            if tier_new != 1:
                ge = c_cal >= s
            elif self.rule == "fine":
                ge = f_cal >= f
            else:  # both scores' exceedance counts, each among the other items (symmetric), combined
                f_counts, f_new = loo_f + (f >= f_cal), exceedances(f_cal, np.array([f]))[0]
                if self.rule == "min":
                    ge = np.minimum(counts, f_counts) <= min(count_new, f_new)
                else:  # "sum": the two ranks added
                    ge = counts + f_counts <= count_new + f_new
            out[j] = (1.0 + above + (same & ge).sum()) / (n + 1.0)
        return out

    def in_band(self, counts: np.ndarray) -> np.ndarray:
        """Items (by coarse exceedance count) whose decision the second look may change."""
        return self._tier(np.asarray(counts)) == 1

    def set_alpha(self, alpha: float) -> None:
        """Fix the band's exceedance-count limits for `alpha` (a count c means coarse p = (c + 1) / (n + 1))."""
        n1 = self.coarse_cal.size + 1
        self._hi = math.floor(self.band[0] * alpha * n1 + 1e-9) - 1  # counts <= this: tier 2 (coarse p <= lo)
        self._lo = math.floor(self.band[1] * alpha * n1 + 1e-9) - 1  # counts > this: tier 0 (coarse p > hi)

    def _tier(self, counts: np.ndarray) -> np.ndarray:
        c = np.asarray(counts)
        return np.where(c <= self._hi, 2, np.where(c <= self._lo, 1, 0))

    # ---- model files ----------------------------------------------------------------------------------------
    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Arrays and metadata that rebuild this refiner (the fine model's own state included)."""
        arrays = {"coarse_cal": self.coarse_cal, "fine_cal": self.fine_cal}
        if self.pixel_quantiles is not None:
            arrays["pixel_quantiles"] = self.pixel_quantiles
        arrays |= {f"fine/{k}": np.ascontiguousarray(v) for k, v in self.fine._state_arrays().items()}
        meta = {"grid": list(self.grid), "overlap": self.overlap, "band": list(self.band), "rule": self.rule,
                "fine_params": {k: _jsonable(v) for k, v in self.fine.get_params().items()},
                "fine_meta": self.fine._state_meta()}
        return arrays, meta

    @classmethod
    def from_state(cls, detector: Any, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Refiner:
        """Inverse of `state` (the fine model is a new detector of the coarse one's class)."""
        fine = type(detector)(**meta["fine_params"])
        fine._load_state({k[len("fine/"):]: v for k, v in arrays.items() if k.startswith("fine/")}, meta["fine_meta"])
        return cls(fine, np.asarray(arrays["coarse_cal"], dtype=np.float64),
                   np.asarray(arrays["fine_cal"], dtype=np.float64), tuple(meta["grid"]), float(meta["overlap"]),
                   tuple(meta["band"]), arrays.get("pixel_quantiles"), meta.get("rule", "min"))


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return str(value) if hasattr(value, "__fspath__") else value


def _rgb(item: Any) -> np.ndarray:
    from normalcy.data import as_rgb_array

    return as_rgb_array(getattr(item, "source", item))


def fit_refiner(detector: Any, items: list, *, grid: tuple[int, int] = GRID, overlap: float = OVERLAP,
                band: tuple[float, float] = BAND, tiles_per_image: int = 1) -> Refiner:
    """Fit the fine model on tiles of the images that trained `detector` and refine every calibration image.

    `items` must be the images `detector.fit` was given (same order): the hold-out split is planned again from
    the detector's seed and checked against the stored calibration scores. `tiles_per_image` random tiles of each
    training image (seeded) fit the fine model, so it costs about as much as the coarse one.
    """
    from normalcy.calibration.fitting import plan_folds
    from normalcy.detectors.image.common import PREDICT_CHUNK
    from normalcy.features.preprocess import aspect_canvas

    cal: Calibration = detector.calibration_
    if cal.method != "holdout" or cal.groups:
        raise ParameterError(f"refine needs one hold-out calibration set (this fit used {cal.method!r}"
                             f"{' with groups' if cal.groups else ''}): fit on more normal images (at least "
                             f"{math.ceil(1 / detector.alpha) - 1} / calibration_fraction) and without groups")
    if not (0.0 <= band[0] < band[1]):
        raise ParameterError(f"refine band must satisfy 0 <= low < high (multiples of alpha), got {band}")
    _, folds = plan_folds(None, len(items), float(detector.calibration_fraction), float(detector.alpha),
                          int(detector.seed))
    train_idx, cal_idx = folds[0]
    cal_items = [items[int(i)] for i in cal_idx]
    coarse = np.concatenate([detector._score(cal_items[s:s + PREDICT_CHUNK]).scores
                             for s in range(0, len(cal_items), PREDICT_CHUNK)]).astype(np.float64)
    if coarse.size != cal.n or not np.allclose(np.sort(coarse), cal.scores, rtol=1e-5, atol=1e-6):
        raise ParameterError("refine: these images are not the ones the detector was fitted on (the calibration "
                             "scores differ); pass the same images, in the same order, as to fit")
    rng = np.random.default_rng(int(detector.seed) + 17)
    tiles = []
    for i in train_idx:
        parts = cut_tiles(_rgb(items[int(i)]), grid, overlap)
        for k in rng.choice(len(parts), size=min(tiles_per_image, len(parts)), replace=False):
            tiles.append(np.ascontiguousarray(parts[int(k)]))
    params = detector.get_params() | {"progress": False}
    fine = type(detector)(**params)
    if getattr(fine, "resize_mode", "") == "aspect":  # the tiles' own aspect, at the coarse canvas's pixel count
        fine.canvas_ = aspect_canvas(float(np.median([t.shape[0] / t.shape[1] for t in tiles])),
                                     int(fine.image_size))
    fine._fit(tiles)
    refiner = Refiner(fine, coarse, np.empty(0), tuple(grid), float(overlap), tuple(band))
    fine_cal, maps = [], []
    for s in range(0, len(cal_items), PREDICT_CHUNK):
        sc, mp = refiner.fine_scores([_rgb(it) for it in cal_items[s:s + PREDICT_CHUNK]], maps=True)
        fine_cal.append(sc)
        maps.extend(mp)
    refiner.fine_cal = np.concatenate(fine_cal)
    if maps:
        from normalcy.calibration.conformal import pixel_quantiles

        refiner.pixel_quantiles = pixel_quantiles(maps, seed=int(detector.seed))
    return refiner


def get_refiner(detector: Any) -> Refiner:
    """The detector's refiner (rebuilt from a model file on first use); a clear error when it was fitted without."""
    refiner = getattr(detector, "refiner_", None)
    if refiner is None and getattr(detector, "_refine_state", None) is not None:
        refiner = detector.refiner_ = Refiner.from_state(detector, *detector._refine_state)
        detector._refine_state = None
    if refiner is None:
        raise ParameterError("this model has no second look: fit it with refine=True (CLI: `normalcy fit --refine`)")
    return refiner


def refine_predictions(detector: Any, images: list, preds: list, alpha: float | None = None,
                       pixel_fpr: float | None = None) -> list:
    """Re-decide the predictions in the band around alpha with the fine model (the others are unchanged)."""
    refiner = get_refiner(detector)
    alpha = check_alpha(detector.alpha if alpha is None else alpha)
    refiner.set_alpha(alpha)
    coarse = np.array([p.score for p in preds], dtype=np.float64)
    counts = exceedances(refiner.coarse_cal, coarse)
    todo = np.flatnonzero(refiner.in_band(counts) & np.isfinite(coarse))
    if todo.size == 0:
        return preds
    fine, maps = refiner.fine_scores([_rgb(images[int(i)]) for i in todo], maps=True)
    p = refiner.p_values(coarse[todo], fine)
    n = refiner.coarse_cal.size
    low, high = p_interval(np.rint(p * (n + 1) - 1), n)
    status = decision_status(p, low, high, alpha)
    cal: Calibration = detector.calibration_
    grades = cal.severity(coarse[todo], alpha, p=p)
    pix_t = _pixel_threshold(refiner, detector, pixel_fpr)
    for j, i in enumerate(todo):
        pred = preds[int(i)]
        before = pred.p_value
        pred.p_value, pred.p_low, pred.p_high = float(p[j]), float(low[j]), float(high[j])
        pred.is_anomaly = bool(p[j] <= alpha)
        pred.decision, pred.severity = status[j], grades[j]
        if maps and pred.anomaly_map is not None:
            pred.anomaly_map = maps[j]
            pred.mask = (maps[j] > pix_t) if pred.is_anomaly else np.zeros(maps[j].shape, dtype=bool)
        note = f"refined: {refiner.grid[0]}x{refiner.grid[1]} tiles, fine score {fine[j]:.4g}, coarse p {before:.4f}"
        pred.calibration_note = "; ".join(x for x in (pred.calibration_note, note) if x)
    return preds


def _pixel_threshold(refiner: Refiner, detector: Any, pixel_fpr: float | None) -> float:
    """Fine-map value exceeded by `pixel_fpr` of the calibration images' merged fine maps."""
    if refiner.pixel_quantiles is None:
        return math.inf
    level = check_alpha(getattr(detector, "pixel_fpr", 0.001) if pixel_fpr is None else pixel_fpr, "pixel_fpr")
    probe = Calibration(np.empty(0))
    probe.pixel_fpr_levels = detector.calibration_.pixel_fpr_levels
    probe.pixel_quantiles = refiner.pixel_quantiles
    return probe.pixel_threshold(level)


class Refined:
    """A fitted detector whose `predict` always takes the second look (for callers that only call `predict`)."""

    def __init__(self, detector: Any) -> None:
        get_refiner(detector)  # fails early, before any image is read, when the model has no second look
        object.__setattr__(self, "_detector", detector)

    def predict(self, X: Any, *args: Any, **kwargs: Any) -> list:
        return self._detector.predict(X, *args, refine=True, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._detector, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._detector, name, value)
