"""Explain a detection: regions of the calibrated map, a template sentence, the nearest known defect type.

Everything here is deterministic and needs no model: `explanation_for` turns one Prediction (map, mask,
calibration) into a structured explanation plus a short sentence; `DefectGallery` (normalcy.explain.gallery) adds the
nearest labelled defect type; `normalcy.explain.narrator` may add a free-text reply from a chat model on top.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from normalcy.explain.regions import regions_with_masks

SIZE_WORDS = ((0.005, "small"), (0.02, "medium"), (float("inf"), "large"))  # by fraction of the image area
ROWS, COLS = ("top", "middle", "bottom"), ("left", "centre", "right")
MAX_LISTED = 3  # regions described one by one in the sentence


def size_word(fraction: float) -> str:
    """small (< 0.5 % of the image), medium (< 2 %) or large."""
    return next(word for limit, word in SIZE_WORDS if fraction < limit)


def position_word(centroid: Sequence[float], shape: tuple[int, int]) -> str:
    """Where a point lies on a 3×3 grid of the image: "top-left", "centre", "bottom", ..."""
    h, w = shape
    row = ROWS[min(2, int(3 * centroid[1] / max(h, 1)))]
    col = COLS[min(2, int(3 * centroid[0] / max(w, 1)))]
    if row == "middle":
        return "centre" if col == "centre" else col
    return row if col == "centre" else f"{row}-{col}"


def _fmt_p(p: float | None) -> str:
    if p is None or not np.isfinite(p):
        return "n/a"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.0e}"


def _region_phrase(r: dict[str, Any], shape: tuple[int, int], first: bool) -> str:
    sev = " severe" if r.get("severity") == "severe" else ""
    where = position_word(r["centroid"], shape)
    pct = 100.0 * r["area_fraction"]
    detail = f"{pct:.1f} % of the image" if first else f"{pct:.1f} %"
    if r.get("p_value") is not None:
        detail += f", peak pixel p = {_fmt_p(r['p_value'])}"
    if r.get("defect_type"):
        detail += f", looks like {r['defect_type']} ({r['similarity']:.2f})"
    return f"a {size_word(r['area_fraction'])}{sev} one at the {where} ({detail})"


def sentence(expl: dict[str, Any]) -> str:
    """A short plain-English summary of a structured explanation (template, no model)."""
    p = _fmt_p(expl.get("p_value"))
    regions = expl.get("regions") or []
    if not expl.get("is_anomaly"):
        if expl.get("severity") == "suspicious":
            return f"Not flagged, but suspicious (image p = {p}): in the tail of normal scores."
        return f"Looks normal (image p = {p})."
    if not regions:
        return f"Flagged as {expl.get('severity')} (image p = {p}), but no region exceeds the pixel threshold."
    shape = tuple(expl["shape"])
    n = len(regions)
    head = f"{n} anomalous region{'s' if n > 1 else ''} (image p = {p}, {expl.get('severity')}): "
    parts = [_region_phrase(r, shape, i == 0) for i, r in enumerate(regions[:MAX_LISTED])]
    text = head + (", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0])
    if n > MAX_LISTED:
        text += f", and {n - MAX_LISTED} smaller one{'s' if n - MAX_LISTED > 1 else ''}"
    return text + "."


def explanation_for(pred: Any, calibration: Any, with_masks: bool = True) -> tuple[dict[str, Any], list[np.ndarray]]:
    """Structured explanation of one Prediction (JSON-ready) and the boolean mask of each of its regions."""
    amap, mask = pred.anomaly_map, pred.mask
    regions, masks = regions_with_masks(mask, amap, calibration, with_masks)
    shape = tuple(int(v) for v in (amap.shape if amap is not None else (0, 0)))
    expl: dict[str, Any] = {
        "is_anomaly": bool(pred.is_anomaly),
        "p_value": float(pred.p_value) if np.isfinite(pred.p_value) else None,
        "severity": pred.severity,
        "shape": list(shape),
        "regions": regions,
    }
    expl["summary"] = sentence(expl)
    return expl, masks


def attach(pred: Any, calibration: Any) -> Any:
    """Give a Prediction with a map its structured explanation (in place); returns the prediction."""
    if pred.anomaly_map is not None and pred.status == "ok":
        pred.explanation, _ = explanation_for(pred, calibration, with_masks=False)
    return pred


def attach_all(preds: Sequence[Any], calibration: Any) -> list[Any]:
    """Attach explanations to every prediction with a map (callers such as predict and serve do this)."""
    return [attach(p, calibration) for p in preds]


def add_nearest_types(expl: dict[str, Any], matches: Sequence[tuple[str, float] | None]) -> dict[str, Any]:
    """Record each region's nearest known defect type (and the image's: its top region's) and re-word."""
    for r, m in zip(expl["regions"], matches):
        if m is not None:
            r["defect_type"], r["similarity"] = m[0], float(m[1])
    top = expl["regions"][0] if expl["regions"] else {}
    if top.get("defect_type"):
        expl["nearest_type"] = {"type": top["defect_type"], "similarity": top["similarity"]}
    expl["summary"] = sentence(expl)
    return expl
