"""`normalcy bench`: fit and evaluate image detectors on MVTec-layout folders; print tables, write JSON."""

from __future__ import annotations

import gc
import json
import resource
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from normalcy import metrics
from normalcy.calibration.severity import severity_fields
from normalcy.data import as_rgb_array, find_categories, load_mvtec, read_mask
from normalcy.detectors import create_detector
from normalcy.features.preprocess import prepare_batch

CAL_ALPHAS = (0.01, 0.05)
TABLE_COLUMNS = ("category", "detector", "image_auroc", "image_ap", "image_f1max", "pixel_auroc", "aupro",
                 "fit_s", "predict_ms_median", "backbone_ms_median")


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def masks_for(test: Sequence, maps: list[np.ndarray]) -> list[np.ndarray] | None:
    """Ground-truth masks at each map's size (zeros for good images); None if the set has no masks."""
    if all(s.mask_path is None for s in test if s.label == 1):
        return None
    out = []
    for s, m in zip(test, maps):
        out.append(read_mask(s.mask_path, m.shape) if s.mask_path is not None else np.zeros(m.shape, bool))
    return out


def time_per_image(det: Any, samples: Sequence, n: int) -> tuple[float, float]:
    """Median ms per image at batch 1: end-to-end predict (load → result) and backbone forward alone.

    Both are measured on the same images, interleaved, so their ratio is meaningful on a noisy machine.
    """
    picks = list(samples[:n])
    det.predict([picks[0].path])  # warm-up
    e2e, bb = [], []
    for s in picks:
        t0 = time.perf_counter()
        det.predict([s.path])
        e2e.append(time.perf_counter() - t0)
        if getattr(det, "kind", "") == "image":
            x, _ = prepare_batch([as_rgb_array(s.path)], int(det.image_size), det.resize_mode)
            t0 = time.perf_counter()
            det.extractor.backbone_only(x)
            bb.append(time.perf_counter() - t0)
    return 1000 * statistics.median(e2e), (1000 * statistics.median(bb) if bb else float("nan"))


def calibration_rates(det: Any, result: Any, labels: np.ndarray) -> dict[str, dict[str, float]]:
    """Realized false-alarm and detection rates on the test set at each alpha, from calibrated thresholds."""
    out = {}
    for alpha in CAL_ALPHAS:
        flagged = np.array([p.is_anomaly for p in det.decide(result, alpha=alpha)])
        good, bad = labels == 0, labels == 1
        out[str(alpha)] = {
            "fpr": float(flagged[good].mean()) if good.any() else float("nan"),
            "tpr": float(flagged[bad].mean()) if bad.any() else float("nan"),
        }
    return out


def evaluate(category: Path, detector: str, params: dict[str, Any], timing_images: int = 20) -> dict[str, Any]:
    """Fit one detector on one category's train/good and evaluate it on test/: one result row."""
    train, test = load_mvtec(category)
    det = create_detector(detector, **params)
    gc.collect()
    t0 = time.perf_counter()
    det.fit(train)
    fit_s = time.perf_counter() - t0
    result = det.score(test)
    labels = np.array([s.label for s in test])
    row: dict[str, Any] = {
        "category": category.name,
        "detector": detector,
        "backbone": getattr(det, "backbone", None),
        "image_size": getattr(det, "image_size", None),
        **metrics.image_metrics(labels, result.scores),
        "pixel_auroc": float("nan"),
        "aupro": float("nan"),
    }
    if result.maps is not None:
        masks = masks_for(test, result.maps)
        if masks is not None:
            t0 = time.perf_counter()
            row.update(metrics.pixel_metrics(masks, result.maps))
            row["pixel_metrics_s"] = time.perf_counter() - t0
    det.progress = False
    predict_ms, backbone_ms = time_per_image(det, test, min(timing_images, len(test)))
    row.update(
        fit_s=fit_s,
        predict_ms_median=predict_ms,
        backbone_ms_median=backbone_ms,
        predict_over_backbone=predict_ms / backbone_ms if backbone_ms == backbone_ms else float("nan"),
        peak_rss_mb=peak_rss_mb(),
        n_train=len(train),
        n_test=len(test),
        n_test_good=int((labels == 0).sum()),
        calibration=calibration_rates(det, result, labels),
        calibration_method=det.calibration_.method,
        n_calibration=det.calibration_.n,
        torch_threads=torch.get_num_threads(),
    )
    row.update(severity_fields(category, test, result.scores, det.calibration_.p_values(result.scores)))
    return row


def format_table(rows: list[dict[str, Any]]) -> str:
    """A fixed-width text table of the headline figures."""
    head = [c.replace("_median", "") for c in TABLE_COLUMNS] + ["fpr@.01", "tpr@.01", "fpr@.05", "tpr@.05"]
    lines = [" | ".join(f"{h:>11}" for h in head)]
    for r in rows:
        cells = []
        for c in TABLE_COLUMNS:
            v = r.get(c)
            cells.append(f"{v:>11.4f}" if isinstance(v, float) else f"{str(v)[:11]:>11}")
        for a in ("0.01", "0.05"):
            cal = r.get("calibration", {}).get(a, {})
            cells += [f"{cal.get('fpr', float('nan')):>11.4f}", f"{cal.get('tpr', float('nan')):>11.4f}"]
        lines.append(" | ".join(cells))
    return "\n".join(lines)


def run_image_bench(
    root: str | Path,
    detectors: Sequence[str] = ("patchcore",),
    params: dict[str, Any] | None = None,
    json_path: str | Path | None = None,
    timing_images: int = 20,
    echo: Any = print,
) -> list[dict[str, Any]]:
    """Evaluate each detector on each category under `root`; print a table and optionally write JSON."""
    rows = []
    for category in find_categories(root):
        for name in detectors:
            echo(f"[bench] {category.name}: {name} …")
            rows.append(evaluate(category, name, dict(params or {}), timing_images))
            echo(format_table(rows[-1:]))
    if len(rows) > 1:
        echo("\nsummary\n" + format_table(rows))
    if json_path is not None:
        Path(json_path).write_text(json.dumps({"results": json_ready(rows)}, indent=2, allow_nan=False))
        echo(f"[bench] wrote {json_path}")
    return rows


def json_ready(value: Any) -> Any:
    """Plain JSON values: numpy scalars unwrapped, NaN/inf as null (strict JSON has no NaN)."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
