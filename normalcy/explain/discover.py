"""`normalcy discover`: group the anomalous regions of flagged images into defect types nobody has labelled.

Pipeline: score the images (one backbone pass also gives the patch features), keep the flagged ones, take each
one's most anomalous region (highest peak), embed it normal-relative (normalcy.explain.region_features), cluster
with K chosen by silhouette (normalcy.explain.clustering), write one contact sheet per cluster and the assignments as
JSON. On an MVTec folder the true types are known, so NMI / ARI / Hungarian accuracy are reported too, and the same
clustering on ground-truth masks of every defective image (an oracle localization) separates localization from
clustering errors.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from normalcy.errors import LayoutError, ParameterError
from normalcy.explain.clustering import K_RANGE, cluster, cluster_metrics, prepare_embeddings
from normalcy.explain.contact_sheet import Tile, contact_sheet
from normalcy.explain.region_features import embed_regions, resolve_reference, scored_features
from normalcy.explain.regions import regions_with_masks

DEFAULT_FIT_IMAGES = 150  # seeded subsample of train/good when no model is given (speed; see docs/explain.md)
SHEET_MAX = 48  # crops per contact sheet (highest peaks first)
K_SELECTION = "silhouette (cosine) of Ward agglomerative clustering over K = {lo}..{hi}"


@dataclass
class FoundRegion:
    """One flagged image's most anomalous region, its embedding and (when known) the image's true type."""

    path: str
    region: dict[str, Any]
    embedding: np.ndarray
    true_type: str = ""
    p_value: float = float("nan")


def _inputs(data: Path) -> tuple[list[Any], bool]:
    """Items to search: an MVTec category's test images (labelled) or the images of a folder (unlabelled)."""
    from normalcy.data import load_folder, load_mvtec

    if (data / "test").is_dir() and (data / "train").is_dir():
        return load_mvtec(data)[1], True
    if data.is_dir():
        return load_folder(data, recursive=True), False
    return [data], False


def default_detector(data: Path, n_fit: int, seed: int, progress: bool, **params: Any) -> Any:
    """PatchCore fitted on a seeded subsample of `data/train/good` (all of it when n_fit <= 0)."""
    from normalcy.data import list_images
    from normalcy.detectors import create_detector

    good = data / "train" / "good"
    if not good.is_dir():
        raise LayoutError(f"{data} has no train/good to fit on; pass --model model.normalcy")
    files = list_images(good)
    if 0 < n_fit < len(files):
        keep = np.sort(np.random.default_rng(seed).choice(len(files), n_fit, replace=False))
        files = [files[i] for i in keep]
    det = create_detector("patchcore", seed=seed, progress=progress, **params)
    return det.fit(files)


def find_regions(det: Any, items: list[Any], alpha: float | None, pixel_fpr: float | None,
                 reference: str, oracle: bool) -> tuple[list[FoundRegion], list[FoundRegion], dict[str, int]]:
    """Top region of every flagged image, oracle regions (ground-truth masks of defective images) and counts."""
    from normalcy.data import read_mask

    found, truth_regions = [], []
    counts: Counter = Counter()
    for item, (pred, info) in zip(items, scored_features(det, items, alpha, pixel_fpr)):
        if pred.status != "ok" or pred.anomaly_map is None:
            raise ParameterError(f"{det.name} gave no anomaly map for {getattr(item, 'path', item)}: discover "
                                 f"needs a detector with maps (patchcore, padim)")
        true_type = getattr(item, "defect_type", "") or ""
        counts[f"images:{true_type}"] += 1
        path = str(getattr(item, "path", item))
        if oracle and getattr(item, "mask_path", None) is not None:
            gt = read_mask(item.mask_path, pred.anomaly_map.shape)
            if gt.any():
                emb = embed_regions(det, info, [gt], reference)[0]
                truth_regions.append(FoundRegion(path, {}, emb, true_type, pred.p_value))
        if not pred.is_anomaly:
            continue
        counts[f"flagged:{true_type}"] += 1
        regions, masks = regions_with_masks(pred.mask, pred.anomaly_map, det.calibration_)
        if regions:
            emb = embed_regions(det, info, masks[:1], reference)[0]
            found.append(FoundRegion(path, regions[0], emb, true_type, pred.p_value))
    return found, truth_regions, dict(counts)


def labelled_metrics(regions: list[FoundRegion], labels: np.ndarray) -> dict[str, Any]:
    """NMI/ARI/accuracy over regions whose image has a true defect type (normal false alarms excluded)."""
    keep = [i for i, r in enumerate(regions) if r.true_type and r.true_type != "good"]
    if len(keep) < 2:
        return {"nmi": None, "ari": None, "accuracy": None, "n_scored": len(keep)}
    truth = [regions[i].true_type for i in keep]
    return cluster_metrics(truth, labels[keep]) | {"n_scored": len(keep)}


def gallery_accuracy(found: list[FoundRegion], oracle: list[FoundRegion]) -> dict[str, Any]:
    """How often the nearest labelled example names the right type (what `--gallery` does), leave-one-out.

    Gallery = ground-truth-mask embeddings of the defective images; queries = the flagged images' predicted top
    regions (their own image left out) and, for reference, the ground-truth regions themselves.
    """
    g = np.stack([r.embedding for r in oracle])
    g = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
    g_types = np.array([r.true_type for r in oracle])
    g_paths = [r.path for r in oracle]

    def accuracy(queries: list[FoundRegion]) -> float | None:
        if not queries:
            return None
        q = np.stack([r.embedding for r in queries])
        sims = (q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)) @ g.T
        for a, r in enumerate(queries):
            sims[a, [j for j, p in enumerate(g_paths) if p == r.path]] = -np.inf
        return float(np.mean(g_types[sims.argmax(1)] == np.array([r.true_type for r in queries])))

    typed = [r for r in found if r.true_type and r.true_type != "good"]
    return {"predicted_regions": accuracy(typed), "n_predicted": len(typed), "gt_regions": accuracy(oracle),
            "n_gt": len(oracle)}


def _cluster_regions(regions: list[FoundRegion], k: int | None, k_range: tuple[int, int]) -> Any:
    x = prepare_embeddings(np.stack([r.embedding for r in regions]))
    return cluster(x, k=k, k_range=k_range)


def write_sheets(regions: list[FoundRegion], labels: np.ndarray, out: Path) -> list[dict[str, Any]]:
    """One contact sheet per cluster (highest peaks first); returns a summary of each cluster."""
    clusters = []
    for c in sorted(set(int(v) for v in labels)):
        members = sorted((r for r, lab in zip(regions, labels) if lab == c), key=lambda r: -r.region["peak"])
        tiles = [Tile(r.path, r.region["box"], r.true_type or Path(r.path).stem) for r in members[:SHEET_MAX]]
        sheet = contact_sheet(tiles, out / f"cluster_{c:02d}.png", title=f"cluster {c}: {len(members)} regions")
        clusters.append({"cluster": c, "size": len(members), "sheet": sheet.name,
                         "true_types": dict(Counter(r.true_type for r in members if r.true_type))})
    return clusters


def discover(data: str | Path, out: str | Path, model: str | Path | None = None, k: int | None = None,
             alpha: float | None = None, pixel_fpr: float | None = None, n_fit: int = DEFAULT_FIT_IMAGES,
             reference: str = "auto", k_range: tuple[int, int] = K_RANGE, seed: int = 0,
             progress: bool = True, detector_params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Find, embed and cluster anomalous regions; write contact sheets to `out`; return the JSON-ready report.

    Without `model`, PatchCore (with `detector_params`) is fitted on `n_fit` seeded train/good images of `data`.
    """
    from normalcy.store import load

    start = time.perf_counter()
    data, out = Path(data), Path(out)
    items, labelled = _inputs(data)
    if model is not None:
        det = load(model)
    else:
        det = default_detector(data, n_fit, seed, progress, **(detector_params or {}))
    det.progress = progress
    if getattr(det, "kind", "") != "image":
        raise ParameterError(f"discover needs an image detector with anomaly maps, got {det.name!r}")
    ref = resolve_reference(det, reference)
    found, oracle, counts = find_regions(det, items, alpha, pixel_fpr, ref, oracle=labelled)
    lo, hi = k_range
    report: dict[str, Any] = {
        "k": 0, "nmi": None, "ari": None, "accuracy": None,
        "data": str(data), "model": str(model) if model else f"patchcore fitted on {n_fit or 'all'} train/good "
                                                             f"images (seed {seed})",
        "reference": ref, "k_selection": "given" if k else K_SELECTION.format(lo=lo, hi=hi),
        "alpha": float(det.alpha if alpha is None else alpha), "counts": counts, "n_regions": len(found),
    }
    out.mkdir(parents=True, exist_ok=True)
    if len(found) >= 2:
        result = _cluster_regions(found, k, k_range)
        report |= {"k": result.k, "silhouettes": result.silhouettes}
        if labelled:
            report |= labelled_metrics(found, result.labels)
            n_types = len({r.true_type for r in found if r.true_type and r.true_type != "good"})
            if 2 <= n_types <= len(found) and n_types != result.k:
                fixed = _cluster_regions(found, n_types, k_range)
                report["true_k"] = {"k": n_types} | labelled_metrics(found, fixed.labels)
        report["clusters"] = write_sheets(found, result.labels, out)
        report["assignments"] = [{"path": r.path, "cluster": int(c), "true_type": r.true_type or None,
                                  "p_value": r.p_value, "region": r.region} for r, c in zip(found, result.labels)]
    if labelled and len(oracle) >= 2:
        o = _cluster_regions(oracle, k, k_range)
        report["oracle_gt_masks"] = {"k": o.k, "n_scored": len(oracle)} | labelled_metrics(oracle, o.labels)
        report["gallery_1nn"] = gallery_accuracy(found, oracle)
        n_types = len({r.true_type for r in oracle})
        o_true_k = _cluster_regions(oracle, n_types, k_range)
        report["oracle_gt_masks_true_k"] = {"k": n_types} | labelled_metrics(oracle, o_true_k.labels)
    report["elapsed_s"] = round(time.perf_counter() - start, 1)
    return report


def write_report(report: dict[str, Any], path: str | Path) -> Path:
    """Write the discovery report as indented JSON (NaN p-values become null)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_json_safe(report), indent=2))
    return path


def _json_safe(value: Any) -> Any:
    """Plain JSON values: numpy scalars to Python, NaN/inf to None, dict keys to strings."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value
