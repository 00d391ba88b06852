"""Defect regions from a binary mask: connected components with box, area and peak score."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage


def mask_regions(mask: np.ndarray, amap: np.ndarray | None = None) -> list[dict[str, Any]]:
    """8-connected components of `mask`, largest first: box [x0, y0, x1, y1] (exclusive end), area, peak."""
    if mask is None or not mask.any():
        return []
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    areas = np.bincount(labels.ravel(), minlength=n + 1)
    regions = []
    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
        region: dict[str, Any] = {"box": [int(sl[1].start), int(sl[0].start), int(sl[1].stop), int(sl[0].stop)],
                                  "area": int(areas[i])}
        if amap is not None:
            region["peak"] = float(amap[sl][labels[sl] == i].max())
        regions.append(region)
    return sorted(regions, key=lambda r: -r["area"])
