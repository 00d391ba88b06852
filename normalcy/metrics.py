"""Exact, fast anomaly-detection metrics: image-level ranking scores and pixel-level AUROC / AUPRO.

Every figure is a fraction in [0, 1]. Equal scores are never split: they count as half a pair for ROC
and form a single threshold step for precision-recall and PRO curves, so the results are exact (they
match scikit-learn and the MVTec-AD definition), not approximations on a threshold grid.

Pixel metrics never sort more than they must and never argsort the pooled pixels: ROC AUC sorts the
two classes separately and counts, per defect pixel, the normal pixels below it (exact integers);
AUPRO sorts only the highest-scoring normal pixels, those that matter up to ``max_fpr`` (selected
with a sampled lower bound that is then verified, so the result stays exact).
±inf scores are ordered as usual; NaN scores raise ShapeError.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from normalcy.errors import ParameterError, ShapeError

__all__ = [
    "auroc",
    "average_precision",
    "f1_max",
    "pixel_auroc",
    "aupro",
    "image_metrics",
    "pixel_metrics",
]

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)  # defect regions are 8-connected, as in MVTec-AD
_SAMPLE_SIZE = 1 << 19  # negatives sampled to bound the AUPRO threshold; below ~4x this, no sampling
_SAMPLE_MARGIN = 0.02  # fraction of negatives kept beyond max_fpr so the sampled bound is nearly always safe
_NUMERIC_KINDS = "biuf"
_BLOCK = 1 << 16  # sorted-array block searched at once: 256 KiB of float32 stays in cache


# --- image level -----------------------------------------------------------------------------------------
def _binary_problem(
    labels: Sequence | np.ndarray, scores: Sequence | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Validate 1-D labels/scores and return them as (bool, float64) arrays."""
    y, s = np.asarray(labels), np.asarray(scores)
    if y.ndim != 1 or s.ndim != 1:
        raise ShapeError(f"labels and scores must be 1-D, got shapes {y.shape} and {s.shape}")
    if y.size != s.size:
        raise ShapeError(f"labels has {y.size} entries but scores has {s.size}")
    if y.dtype != bool:
        if y.dtype.kind not in _NUMERIC_KINDS or not np.isin(y, (0, 1)).all():
            raise ShapeError("labels must be bool or 0/1")
        y = y != 0
    if s.dtype.kind not in _NUMERIC_KINDS:
        raise ShapeError(f"scores must be numeric, got dtype {s.dtype}")
    s = s.astype(np.float64, copy=False)
    nan = np.flatnonzero(np.isnan(s))
    if nan.size:
        raise ShapeError(f"scores contain NaN (first at index {int(nan[0])})")
    return y, s


def _searchsorted_blocked(ref_sorted: np.ndarray, q_sorted: np.ndarray, side: str) -> np.ndarray:
    """np.searchsorted for sorted queries, one cache-sized block of ref at a time (same result, much faster).

    A plain search over a huge ref misses the cache at nearly every bisection step; here the queries
    that land in each block (a contiguous run of the sorted queries) are searched within that block only.
    """
    out = np.zeros(q_sorted.size, dtype=np.int64)
    other = "right" if side == "left" else "left"
    bounds = np.append(np.searchsorted(q_sorted, ref_sorted[::_BLOCK], side=other), q_sorted.size)
    for b, lo in enumerate(range(0, ref_sorted.size, _BLOCK)):
        i0, i1 = bounds[b], bounds[b + 1]
        if i0 < i1:
            out[i0:i1] = lo + np.searchsorted(ref_sorted[lo : lo + _BLOCK], q_sorted[i0:i1], side=side)
    return out


def _twice_ranks(ref_sorted: np.ndarray, q_sorted: np.ndarray) -> np.ndarray:
    """Per sorted query, (#ref < q) + (#ref <= q): twice its Mann-Whitney count against ref, exactly."""
    left = _searchsorted_blocked(ref_sorted, q_sorted, "left")
    twice = 2 * left
    if ref_sorted.size:  # only queries equal to some ref value need the right-side search too
        tied = np.flatnonzero(ref_sorted[np.minimum(left, ref_sorted.size - 1)] == q_sorted)
        twice[tied] += _searchsorted_blocked(ref_sorted, q_sorted[tied], "right") - left[tied]
    return twice


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """ROC AUC of pos over neg (ties half); sorts both arrays IN PLACE, so pass arrays you own."""
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    pos.sort()
    neg.sort()
    pairs = 2 * pos.size * neg.size
    if neg.size >= pos.size:  # query with the smaller group
        return int(_twice_ranks(neg, pos).sum()) / pairs
    return (pairs - int(_twice_ranks(pos, neg).sum())) / pairs


def _threshold_steps(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative (true positives, flagged) at each distinct score, from the highest score down."""
    order = np.argsort(s, kind="stable")[::-1]
    s_desc = s[order]
    ends = np.append(np.flatnonzero(s_desc[1:] != s_desc[:-1]), s_desc.size - 1)
    return np.cumsum(y[order])[ends], ends + 1


def auroc(labels: Sequence | np.ndarray, scores: Sequence | np.ndarray) -> float:
    """Exact ROC AUC (Mann-Whitney U, tied scores count half); NaN when only one class is present.

    Raises ShapeError on a length mismatch, non-0/1 labels or NaN scores.
    """
    y, s = _binary_problem(labels, scores)
    return _auc(s[y], s[~y])


def average_precision(labels: Sequence | np.ndarray, scores: Sequence | np.ndarray) -> float:
    """Average precision as scikit-learn defines it (step-wise, ties one step); NaN without positives."""
    y, s = _binary_problem(labels, scores)
    n_pos = int(y.sum())
    if n_pos == 0:
        return float("nan")
    tp, flagged = _threshold_steps(y, s)
    recall_gain = np.diff(tp, prepend=0) / n_pos
    return float(np.sum(recall_gain * (tp / flagged)))


def f1_max(labels: Sequence | np.ndarray, scores: Sequence | np.ndarray) -> float:
    """Best F1 over every threshold (tied scores one step, exact); NaN without positives."""
    y, s = _binary_problem(labels, scores)
    n_pos = int(y.sum())
    if n_pos == 0:
        return float("nan")
    tp, flagged = _threshold_steps(y, s)
    return float(np.max(2 * tp / (flagged + n_pos)))


def image_metrics(labels: Sequence | np.ndarray, scores: Sequence | np.ndarray) -> dict[str, float]:
    """Image-level AUROC, average precision and F1-max in one dict (keys image_auroc/_ap/_f1max)."""
    return {
        "image_auroc": auroc(labels, scores),
        "image_ap": average_precision(labels, scores),
        "image_f1max": f1_max(labels, scores),
    }


# --- pixel level: validation and pooling -----------------------------------------------------------------
@dataclass
class _Pixels:
    """Validated (mask, map, defect-pixel count) triples sharing one score dtype, with pooled counts."""

    images: list[tuple[np.ndarray, np.ndarray, int]]
    dtype: np.dtype
    n_pos: int
    n_neg: int


def _checked_image(index: int, mask: object, amap: object) -> tuple[np.ndarray, np.ndarray]:
    """Return one image's (bool mask, numeric map), or raise ShapeError naming the image index."""
    mask, amap = np.asarray(mask), np.asarray(amap)
    if amap.ndim != 2 or mask.shape != amap.shape:
        raise ShapeError(f"image {index}: map shape {amap.shape} does not match mask shape {mask.shape}")
    if amap.dtype.kind not in _NUMERIC_KINDS or mask.dtype.kind not in _NUMERIC_KINDS:
        raise ShapeError(f"image {index}: mask and map must be numeric, got {mask.dtype} and {amap.dtype}")
    if amap.dtype.kind == "f" and amap.size and np.isnan(amap.max()):  # max propagates NaN, cheaply
        raise ShapeError(f"image {index}: map contains NaN")
    return (mask if mask.dtype == bool else mask != 0), amap


def _score_dtype(dtypes: list[np.dtype]) -> np.dtype:
    """The dtype every map is compared in: their common float type (ints -> float64, float16 -> float32)."""
    if not dtypes:
        return np.dtype(np.float32)
    common = functools.reduce(np.promote_types, set(dtypes))
    if common.kind != "f":
        return np.dtype(np.float64)
    return np.promote_types(common, np.float32)


def _pixel_pool(masks: Sequence, maps: Sequence) -> _Pixels:
    """Validate masks/maps (skipping images whose mask is None) and pool them in one score dtype."""
    masks, maps = list(masks), list(maps)
    if len(masks) != len(maps):
        raise ShapeError(f"got {len(masks)} masks but {len(maps)} maps")
    pairs = enumerate(zip(masks, maps))
    checked = [_checked_image(i, mask, amap) for i, (mask, amap) in pairs if mask is not None]
    dtype = _score_dtype([amap.dtype for _, amap in checked])
    images, n_pos, n_all = [], 0, 0
    for mask, amap in checked:
        defects = int(np.count_nonzero(mask))
        images.append((mask, amap.astype(dtype, copy=False), defects))
        n_pos, n_all = n_pos + defects, n_all + amap.size
    return _Pixels(images, dtype, n_pos, n_all - n_pos)


def _select(values: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """values[keep], flattened, for same-shaped arrays: np.compress is ~3x faster than bool indexing."""
    return np.compress(keep.ravel(), values.ravel())


def _negatives(pixels: _Pixels, lower: np.generic | None = None) -> np.ndarray:
    """A new array of the non-defect scores (only those >= lower when given), unsorted."""
    if lower is None:
        return _pooled_pixels(pixels, defects=False)
    parts = []
    for mask, amap, n_defect in pixels.images:
        keep = amap >= lower
        if n_defect:
            keep &= ~mask
        parts.append(_select(amap, keep))
    return np.concatenate(parts) if parts else np.empty(0, pixels.dtype)


def _pooled_pixels(pixels: _Pixels, defects: bool) -> np.ndarray:
    """A new array of every defect (or every non-defect) score, written in place without temporaries."""
    out = np.empty(pixels.n_pos if defects else pixels.n_neg, pixels.dtype)
    start = 0
    for mask, amap, n_defect in pixels.images:
        n = n_defect if defects else amap.size - n_defect
        if n == amap.size:
            out[start : start + n].reshape(amap.shape)[...] = amap
        elif n:
            np.compress((mask if defects else ~mask).ravel(), amap.ravel(), out=out[start : start + n])
        start += n
    return out


def _bounding_box(mask: np.ndarray) -> tuple[slice, slice]:
    """The smallest row/column window holding every True pixel (labelling it is much cheaper)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def _regions(pixels: _Pixels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Defect-pixel scores (ascending), their global 8-connected region index, and each region's size."""
    scores, ids, sizes, n_regions = [], [], [], 0
    for mask, amap, n_defect in pixels.images:
        if not n_defect:
            continue
        box = _bounding_box(mask)
        labels, n = ndimage.label(mask[box], structure=_EIGHT_CONNECTED)
        inside = labels > 0
        region = _select(labels, inside) - 1
        scores.append(_select(amap[box], inside))
        ids.append(region + n_regions)
        sizes.append(np.bincount(region, minlength=n))
        n_regions += n
    scores, ids = np.concatenate(scores), np.concatenate(ids)
    return np.sort(scores), _ordered_by(scores, ids), np.concatenate(sizes)


def _ordered_by(scores: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """ids reordered by ascending score (any order among tied scores), matching np.sort(scores).

    For float32 scores, each (score, id) pair is packed into one order-preserving uint64 and sorted
    with np.sort, several times faster than np.argsort.
    """
    if scores.dtype != np.float32:
        return ids[np.argsort(scores)]
    bits = scores.view(np.uint32)
    flip = np.where(bits >> 31 == 1, np.uint32(0xFFFFFFFF), np.uint32(0x80000000))  # IEEE -> unsigned order
    key = ((bits ^ flip).astype(np.uint64) << np.uint64(32)) | ids.astype(np.uint64)
    key.sort()
    return (key & np.uint64(0xFFFFFFFF)).astype(np.intp)


# --- pixel level: metrics --------------------------------------------------------------------------------
def _check_max_fpr(max_fpr: float) -> None:
    """Reject a max_fpr outside (0, 1]: the curve is integrated from FPR 0 up to it."""
    if not 0 < max_fpr <= 1:
        raise ParameterError(f"max_fpr must be in (0, 1], got {max_fpr!r}")


def _negatives_reaching(max_fpr: float, n_neg: int) -> int:
    """Smallest count c of negatives with c / n_neg >= max_fpr, computed exactly as the FPR is."""
    c = min(max(1, math.ceil(max_fpr * n_neg)), n_neg)
    while c > 1 and (c - 1) / n_neg >= max_fpr:
        c -= 1
    while c < n_neg and c / n_neg < max_fpr:
        c += 1
    return c


def _sampled_lower_bound(pixels: _Pixels, keep: float) -> np.generic | None:
    """A score with about `keep` of the negatives above it, from a strided sample; None = use them all."""
    total = pixels.n_pos + pixels.n_neg
    step = total // _SAMPLE_SIZE
    if step < 4 or keep >= 1:
        return None
    parts, offset = [], 0
    for mask, amap, n_defect in pixels.images:
        start = -offset % step  # continue the stride across images so small images are sampled fairly
        picked = amap.ravel()[start::step]
        parts.append(picked[~mask.ravel()[start::step]] if n_defect else picked)
        offset += amap.size
    sample = np.concatenate(parts)
    j = int(sample.size * (1.0 - keep))
    return np.partition(sample, j)[j] if j > 0 else None


def _top_negatives(pixels: _Pixels, k: int, max_fpr: float) -> np.ndarray:
    """Sorted negatives that include the k highest ones; the rest are left out to keep the sort small."""
    lower = _sampled_lower_bound(pixels, max_fpr + _SAMPLE_MARGIN)
    top = _negatives(pixels, lower)
    if lower is not None and top.size < k:  # the sample overestimated the bound: fall back to all
        top = _negatives(pixels)
    top.sort()
    return top


def _region_mean(region: np.ndarray, weights: np.ndarray | None, sizes: np.ndarray) -> float:
    """Mean over regions of (sum of per-pixel weights, or pixel count) / region size."""
    per_region = np.bincount(region, weights=weights, minlength=sizes.size)
    return float(per_region @ (1.0 / sizes)) / sizes.size


def _aupro_from_sorted(
    neg_sorted: np.ndarray,
    n_neg: int,
    scores: np.ndarray,
    region: np.ndarray,
    sizes: np.ndarray,
    max_fpr: float,
) -> float:
    """AUPRO from sorted negatives (at least the top ones) and sorted, region-labelled positives.

    The PRO-FPR curve is a staircase of tied-score steps; the area under its trapezoids up to the
    step at threshold t (where FPR first reaches max_fpr) equals the mean over positive pixels, weighted
    1/(n_regions * region_size), of (#negatives in (t, s) + half #negatives == s) / n_neg. The step
    at t is then integrated up to exactly max_fpr by linear interpolation.
    """
    k = _negatives_reaching(max_fpr, n_neg)
    t = neg_sorted[neg_sorted.size - k]  # the k-th highest negative score
    first_above = int(np.searchsorted(neg_sorted, t, side="right"))
    n_tied = first_above - int(np.searchsorted(neg_sorted, t, side="left"))
    n_above = neg_sorted.size - first_above
    first_tied, first_hot = np.searchsorted(scores, t, side="left"), np.searchsorted(scores, t, side="right")
    twice = _twice_ranks(neg_sorted[first_above:], scores[first_hot:])
    area = _region_mean(region[first_hot:], twice.astype(np.float64), sizes) / (2 * n_neg)
    pro_before = _region_mean(region[first_hot:], None, sizes)
    pro_tied = _region_mean(region[first_tied:first_hot], None, sizes)
    x0, x1 = n_above / n_neg, (n_above + n_tied) / n_neg
    pro_end = pro_before + pro_tied * (max_fpr - x0) / (x1 - x0)
    area += (max_fpr - x0) * (pro_before + pro_end) / 2
    return area / max_fpr


def pixel_auroc(masks: Sequence, maps: Sequence) -> float:
    """Exact ROC AUC over all pixels pooled (ties half); images whose mask is None are skipped.

    Maps may differ in size between images but each must match its own mask (else ShapeError naming
    the index). NaN when there is no defect pixel or no normal pixel.
    """
    pixels = _pixel_pool(masks, maps)
    return _auc(_pooled_pixels(pixels, defects=True), _negatives(pixels))


def aupro(masks: Sequence, maps: Sequence, max_fpr: float = 0.3) -> float:
    """Area under the per-region-overlap curve up to FPR max_fpr, divided by max_fpr (1.0 is perfect).

    MVTec-AD definition: regions are the 8-connected components of every mask; PRO(t) is the mean over
    regions of the fraction of region pixels scoring >= t; FPR(t) is the fraction of all non-defect
    pixels (normal images included) scoring >= t. Images whose mask is None are skipped. NaN when
    there is no defect pixel or no normal pixel.
    """
    _check_max_fpr(max_fpr)
    pixels = _pixel_pool(masks, maps)
    if pixels.n_pos == 0 or pixels.n_neg == 0:
        return float("nan")
    k = _negatives_reaching(max_fpr, pixels.n_neg)
    top = _top_negatives(pixels, k, max_fpr)
    return _aupro_from_sorted(top, pixels.n_neg, *_regions(pixels), max_fpr)


def pixel_metrics(masks: Sequence, maps: Sequence, max_fpr: float = 0.3) -> dict[str, float]:
    """Pixel AUROC and AUPRO in one dict, sorting the negative pixels only once; NaN without defects."""
    _check_max_fpr(max_fpr)
    pixels = _pixel_pool(masks, maps)
    if pixels.n_pos == 0 or pixels.n_neg == 0:
        return {"pixel_auroc": float("nan"), "aupro": float("nan")}
    neg = _negatives(pixels)
    neg.sort()
    scores, region, sizes = _regions(pixels)
    pixel_auc = int(_twice_ranks(neg, scores).sum()) / (2 * scores.size * neg.size)
    pro = _aupro_from_sorted(neg, pixels.n_neg, scores, region, sizes, max_fpr)
    return {"pixel_auroc": pixel_auc, "aupro": pro}
