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
            x, _ = prepare_batch([as_rgb_array(s.path)], det.canvas, det.input_mode)
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


def evaluate(category: Path, detector: str, params: dict[str, Any], timing_images: int = 20,
             report: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Fit one detector on one category's train/good and evaluate it on test/: one result row.

    With `report` (a list), also append what the HTML report shows for this run (normalcy.apps.bench.report).
    """
    train, test = load_mvtec(category)
    det = create_detector(detector, **params)
    gc.collect()
    t0 = time.perf_counter()
    det.fit(train)
    fit_s = time.perf_counter() - t0
    result = det.score(test)
    if report is not None:
        from normalcy.apps.bench.report import collect

        report.append(collect(det, category.name, detector, test, result))
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


# The printed table: (header, row key or calibration "fpr@0.01"-style key, format). It fits a 100-column terminal
# for category names up to ~25 characters and shows rates at the default alpha (0.05); every figure (F1-max, rates
# at 0.01, ...) is in --json.
COMPACT_COLUMNS = (
    ("category", "category", "s"), ("detector", "detector", "s"), ("shots", "shots", "d"),
    ("AUROC", "image_auroc", ".4f"), ("AP", "image_ap", ".4f"), ("pxAUROC", "pixel_auroc", ".4f"),
    ("AUPRO", "aupro", ".4f"), ("FPR@.05", "fpr@0.05", ".4f"), ("TPR@.05", "tpr@0.05", ".4f"),
    ("fit s", "fit_s", ".1f"), ("ms/img", "predict_ms_median", ".1f"),
)


def _cell(row: dict[str, Any], key: str) -> Any:
    if "@" in key:
        rate, alpha = key.split("@")
        return row.get("calibration", {}).get(alpha, {}).get(rate)
    return row.get(key)


def format_table(rows: list[dict[str, Any]]) -> str:
    """A compact text table of the headline figures: names never cut, columns no row has are left out."""
    cols = [c for c in COMPACT_COLUMNS if any(_cell(r, c[1]) is not None for r in rows)]
    texts = []
    for r in rows:
        line = []
        for _, key, fmt in cols:
            v = _cell(r, key)
            if v is None or (isinstance(v, float) and v != v):
                line.append("n/a")
            elif fmt == "s":
                line.append(str(v))
            else:
                line.append(format(v, fmt))
        texts.append(line)
    widths = [max([len(h)] + [len(line[i]) for line in texts]) for i, (h, _, _) in enumerate(cols)]
    def fmt_line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if spec[2] == "s" else c.rjust(w)
                         for c, w, spec in zip(cells, widths, cols)).rstrip()
    return "\n".join([fmt_line([h for h, _, _ in cols])] + [fmt_line(line) for line in texts])


def mean_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One "mean" row per detector over its rows (the headline figures averaged over sets, unweighted)."""
    out = []
    for name in dict.fromkeys(r["detector"] for r in rows):
        mine = [r for r in rows if r["detector"] == name]
        row: dict[str, Any] = {"category": "mean", "detector": name}
        for c in TABLE_COLUMNS[2:]:
            vals = [r.get(c) for r in mine]
            row[c] = float(np.mean(vals)) if all(isinstance(v, (float, int)) for v in vals) else float("nan")
        cal = {}
        for a in ("0.01", "0.05"):
            cal[a] = {k: float(np.mean([r.get("calibration", {}).get(a, {}).get(k, float("nan")) for r in mine]))
                      for k in ("fpr", "tpr")}
        row["calibration"] = cal
        out.append(row)
    return out


def run_image_bench(
    root: str | Path | Sequence[str | Path],
    detectors: Sequence[str] = ("patchcore",),
    params: dict[str, Any] | None = None,
    json_path: str | Path | None = None,
    timing_images: int = 20,
    echo: Any = print,
    report_path: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Evaluate each detector on each category under one root or several; print a table and optionally write JSON
    and a self-contained HTML report (`report_path`, see normalcy.apps.bench.report).

    With more than one category, the summary ends with the mean over them per detector (defaults are chosen on
    that mean, never on one set).
    """
    roots = [root] if isinstance(root, (str, Path)) else list(root)
    rows: list[dict[str, Any]] = []
    details: list[dict[str, Any]] | None = [] if report_path is not None else None
    for r in roots:
        for category in find_categories(r):
            for name in detectors:
                echo(f"[bench] {category.name}: {name} …")
                rows.append(evaluate(category, name, dict(params or {}), timing_images, report=details))
                echo(format_table(rows[-1:]))
    means = mean_rows(rows) if len(rows) > len(detectors) else []
    if len(rows) > 1:
        echo("\nsummary\n" + format_table(rows + means))
    if json_path is not None:
        payload = {"results": json_ready(rows), **({"mean": json_ready(means)} if means else {})}
        Path(json_path).write_text(json.dumps(payload, indent=2, allow_nan=False))
        echo(f"[bench] wrote {json_path}")
    if report_path is not None:
        from normalcy.apps.bench.report import write_report

        source = ", ".join(str(r) for r in roots)
        echo(f"[bench] wrote {write_report(report_path, rows + means, details or [], source)}")
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
