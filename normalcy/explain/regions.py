"""Defect regions from a binary mask: connected components with box, area, centroid, scores and grades.

`describe_regions` gives each connected region what a person asks about it, using the detector's calibration:
box, area, centroid, mean and peak map score, a pixel p-value and a severity, sorted by peak.

Region p-value: the fraction of normal calibration pixels whose map value is >= the region's peak, read from the
calibration's pixel quantiles (log-interpolated, so it bottoms out at 1e-6, the finest level kept). It is a
per-pixel tail probability, not an image-level false-alarm rate. Region severity mirrors the image rule: "severe"
when the peak is beyond q + (q - median) with q the 1e-6 upper quantile of normal pixels, else "anomalous".
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import ndimage

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def label_regions(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected component labels of `mask` (0 = background) and their number."""
    labels, n = ndimage.label(np.asarray(mask, dtype=bool), structure=EIGHT_CONNECTED)
    return labels, int(n)


def pixel_p_values(calibration: Any, values: np.ndarray) -> np.ndarray:
    """Fraction of normal calibration pixels scoring >= each value (NaN without pixel calibration)."""
    values = np.asarray(values, dtype=np.float64)
    levels = getattr(calibration, "pixel_fpr_levels", None)
    quants = getattr(calibration, "pixel_quantiles", None)
    if levels is None or quants is None:
        return np.full(values.shape, np.nan)
    q = np.maximum.accumulate(np.asarray(quants, dtype=np.float64))  # ascending as the tail level shrinks
    log_levels = np.log(np.asarray(levels, dtype=np.float64))
    return np.exp(np.interp(values, q, log_levels, left=0.0, right=float(log_levels[-1])))


def pixel_severe_threshold(calibration: Any) -> float:
    """Map value beyond the normal pixel range: q + (q - median), q = 1e-6 tail quantile (inf if unknown)."""
    if getattr(calibration, "pixel_quantiles", None) is None:
        return math.inf
    top, mid = calibration.pixel_threshold(1e-6), calibration.pixel_threshold(0.5)
    return top + max(top - mid, 1e-12)


def _region_record(labels: np.ndarray, i: int, sl: tuple[slice, slice], amap: np.ndarray | None) -> dict[str, Any]:
    """Geometry (and map scores) of component `i` whose bounding slices are `sl`."""
    inside = labels[sl] == i
    ys, xs = np.nonzero(inside)
    h, w = labels.shape
    area = int(inside.sum())
    rec: dict[str, Any] = {
        "box": [int(sl[1].start), int(sl[0].start), int(sl[1].stop), int(sl[0].stop)],
        "area": area,
        "area_fraction": area / float(h * w),
        "centroid": [float(xs.mean() + sl[1].start), float(ys.mean() + sl[0].start)],
    }
    if amap is not None:
        vals = amap[sl][inside]
        rec["peak"] = float(vals.max())
        rec["mean"] = float(vals.mean())
    return rec


def describe_regions(mask: np.ndarray | None, amap: np.ndarray | None = None,
                     calibration: Any = None) -> list[dict[str, Any]]:
    """Regions with box, area, area_fraction, centroid [x, y], peak, mean, p_value, severity; highest peak first.

    Without a map, regions are ordered by area and carry geometry only.
    """
    return regions_with_masks(mask, amap, calibration, with_masks=False)[0]


def regions_with_masks(mask: np.ndarray | None, amap: np.ndarray | None = None, calibration: Any = None,
                       with_masks: bool = True) -> tuple[list[dict[str, Any]], list[np.ndarray]]:
    """`describe_regions` plus each region's own boolean mask (same order; [] unless `with_masks`)."""
    if mask is None or not np.any(mask):
        return [], []
    labels, _ = label_regions(mask)
    regions = [_region_record(labels, i, sl, amap) for i, sl in enumerate(ndimage.find_objects(labels), start=1)]
    ids = list(range(1, len(regions) + 1))
    if amap is None:
        order = sorted(range(len(regions)), key=lambda j: -regions[j]["area"])
    else:
        p = pixel_p_values(calibration, np.array([r["peak"] for r in regions]))
        severe_t = pixel_severe_threshold(calibration)
        for r, pv in zip(regions, p):
            r["p_value"] = float(pv) if np.isfinite(pv) else None
            r["severity"] = "severe" if r["peak"] >= severe_t else "anomalous"
        order = sorted(range(len(regions)), key=lambda j: (-regions[j]["peak"], -regions[j]["area"]))
    return [regions[j] for j in order], [labels == ids[j] for j in order] if with_masks else []
