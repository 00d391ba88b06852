"""Few-shot, zero-shot and multi-class benchmarks behind `normalcy bench --shots/--seeds/--multiclass`.

Few-shot: for each k in `shots` and each seed, k references are drawn from train/good, the detector is fitted on
them and the test set is scored; test features are extracted once per category and reused by every (k, seed).
Rows keep every key of `normalcy.apps.bench.images.evaluate` and add "shots" and "seed"; one summary row per k holds
the mean over seeds (seed "mean") with "<metric>_std" fields. Zero-shot (`musc`): no training image; the test
set is scored as one unlabeled batch, and the cost per image is timed at several chunk sizes.
Multi-class: one model fitted on all categories' normals together, reported per category next to per-category
models, plus a mean row for each.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from normalcy import metrics
from normalcy.apps.bench.images import (
    calibration_rates,
    evaluate,
    format_table,
    json_ready,
    masks_for,
    peak_rss_mb,
    time_per_image,
)
from normalcy.data import find_categories, load_mvtec
from normalcy.detectors import create_detector, detector_class
from normalcy.detectors.base import ScoreResult
from normalcy.detectors.image.fewshot import sample_references
from normalcy.errors import ParameterError
from normalcy.features.preprocess import restore_maps

METRICS = ("image_auroc", "image_ap", "image_f1max", "pixel_auroc", "aupro")
MUSC_TIMING_CHUNKS = (8, 16, 32, 64)


def score_cached(det: Any, cache: list) -> ScoreResult:
    """Score pre-extracted test features (list of (feats, placements, valid) batches) with a fitted detector."""
    scores, maps = [], []
    for feats, placements, valid in cache:
        s, m = det._score_features(feats, valid)
        scores.append(s.double().numpy())
        maps.extend(det.restore(m, placements) if hasattr(det, "restore")
                    else restore_maps(m, placements, int(det.image_size), float(det.sigma)))
    return ScoreResult(np.concatenate(scores), maps)


def result_row(category: Path, name: str, det: Any, test: list, result: ScoreResult, masks: Any,
               fit_s: float, n_train: int, timing: tuple[float, float]) -> dict[str, Any]:
    """One row with the same keys as `normalcy.apps.bench.images.evaluate`."""
    labels = np.array([s.label for s in test])
    row: dict[str, Any] = {
        "category": category.name, "detector": name, "backbone": det.backbone, "image_size": det.image_size,
        **metrics.image_metrics(labels, result.scores), "pixel_auroc": float("nan"), "aupro": float("nan"),
    }
    if result.maps is not None and masks is not None:
        t0 = time.perf_counter()
        row.update(metrics.pixel_metrics(masks, result.maps))
        row["pixel_metrics_s"] = time.perf_counter() - t0
    predict_ms, backbone_ms = timing
    row.update(
        fit_s=fit_s, predict_ms_median=predict_ms, backbone_ms_median=backbone_ms,
        predict_over_backbone=predict_ms / backbone_ms if backbone_ms == backbone_ms else float("nan"),
        peak_rss_mb=peak_rss_mb(), n_train=n_train, n_test=len(test), n_test_good=int((labels == 0).sum()),
        calibration=calibration_rates(det, result, labels), calibration_method=det.calibration_.method,
        n_calibration=det.calibration_.n, torch_threads=torch.get_num_threads(),
    )
    return row


def summary_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean over seeds of every numeric field, plus "<metric>_std" for the headline metrics."""
    out = dict(rows[0], seed="mean", seeds=[r["seed"] for r in rows])
    for key, value in rows[0].items():
        if isinstance(value, float) and key != "seed":
            out[key] = float(np.mean([r[key] for r in rows]))
    for key in (*METRICS, "predict_ms_median"):
        out[f"{key}_std"] = float(np.std([r[key] for r in rows]))
    return out


def run_shots(category: Path, name: str, params: dict[str, Any], shots: Sequence[int], seeds: Sequence[int],
              timing_images: int, echo: Any) -> list[dict[str, Any]]:
    """Few-shot rows for one category and detector: one per (k, seed) and a mean row per k."""
    train, test = load_mvtec(category)
    for k in shots:
        if k > len(train):
            raise ParameterError(f"--shots {k} exceeds the {len(train)} normal images in {category}/train/good")
    probe = create_detector(name, **params)
    probe.progress = False
    from normalcy.detectors.image.common import ImageDetector
    from normalcy.detectors.image.fewshot import FewShot

    plain = (ImageDetector._score, FewShot._score)
    cached_ok = any(type(probe)._score is f for f in plain) and hasattr(probe, "_score_features")
    cache = list(probe.iter_features(test, "test features")) if cached_ok else None
    masks = None
    rows: list[dict[str, Any]] = []
    timing = (float("nan"), float("nan"))
    for k in shots:
        per_seed = []
        for seed in seeds:
            refs = sample_references(train, k, seed)
            det = create_detector(name, **params)
            t0 = time.perf_counter()
            det.fit(refs)
            fit_s = time.perf_counter() - t0
            result = score_cached(det, cache) if cache is not None else det.score(test)
            if masks is None:
                masks = masks_for(test, result.maps)
            det.progress = False
            if seed == seeds[0]:  # timing once per k: it does not depend on which references were drawn
                timing = time_per_image(det, test, min(timing_images, len(test)))
            row = result_row(category, name, det, test, result, masks, fit_s, k, timing)
            row.update(shots=k, seed=seed)
            if category.name in (getattr(det, "prior_meta_", None) or {}).get("trained_on", []):
                row["note"] = f"the prior head was trained on {category.name}: in-domain, not a few-shot figure"
                if seed == seeds[0]:
                    echo(f"[bench] warning: {row['note']}; pass --param prior=<a head trained without this set>")
            per_seed.append(row)
            echo(f"[bench] {category.name}: {name} shots={k} seed={seed}: image AUROC {row['image_auroc']:.4f}")
        rows += per_seed
        rows.append(summary_row(per_seed))
        echo(format_table(rows[-1:]))
    return rows


def run_zero_shot(category: Path, name: str, params: dict[str, Any], timing_images: int,
                  echo: Any) -> list[dict[str, Any]]:
    """Score the whole test set as one unlabeled batch; time the cost per image at several chunk sizes."""
    _, test = load_mvtec(category)
    det = create_detector(name, **params).fit()
    t0, c0 = time.perf_counter(), time.process_time()
    result = det.score(test)
    total_s, cpu_s = time.perf_counter() - t0, time.process_time() - c0
    det.progress = False
    by_chunk = {}
    sub = test[:: max(1, len(test) // max(timing_images, 2))][: max(timing_images, 2)]
    for size in MUSC_TIMING_CHUNKS if hasattr(det, "chunk_size") else ():  # batch detectors: cost by chunk size
        probe = create_detector(name, **{**params, "chunk_size": size, "progress": False}).fit()
        t1 = time.perf_counter()
        n_t = min(len(test), size)
        probe.score(test[:n_t])
        by_chunk[str(size)] = 1000 * (time.perf_counter() - t1) / n_t
    backbone = [_backbone_ms(det, s) for s in sub]
    row = result_row(category, name, det, test, result, masks_for(test, result.maps), 0.0, 0,
                     (1000 * total_s / len(test), statistics.median(backbone)))
    row.update(shots=0, seed=det.seed, chunk_size=getattr(det, "chunk_size", None), ms_per_image_by_chunk=by_chunk,
               cpu_ms_per_image=1000 * cpu_s / len(test), anomalous_share=getattr(det, "anomalous_share_", None),
               timing_note="predict_ms_median = whole-batch scoring time / n_test (batch scoring, not batch 1)")
    seen = getattr(det, "head_meta_", {}).get("trained_on", [])
    if category.name in seen:  # a transfer-learned head that saw this set: an in-domain figure, not a zero-shot one
        row["note"] = f"the zero-shot head was trained on {category.name}: in-domain, not a zero-shot figure"
        echo(f"[bench] warning: {row['note']}")
    echo(format_table([row]) + f"\n[bench] {name} ms/image by chunk size: {by_chunk}")
    return [row]


def _backbone_ms(det: Any, sample: Any) -> float:
    from normalcy.data import as_rgb_array
    from normalcy.features.preprocess import prepare_batch

    x, _ = prepare_batch([as_rgb_array(sample.path)], det.canvas, det.input_mode)
    t0 = time.perf_counter()
    det.extractor.backbone_only(x)
    return 1000 * (time.perf_counter() - t0)


def run_multiclass(root: str | Path, name: str, params: dict[str, Any], timing_images: int,
                   echo: Any) -> list[dict[str, Any]]:
    """One model on every category's normals vs one model per category; per-category and mean rows."""
    cats = find_categories(root)
    if len(cats) < 2:
        raise ParameterError(f"--multiclass needs a root with 2 or more categories, {root} has {len(cats)}")
    rows = [dict(evaluate(c, name, dict(params), timing_images), setting="per-category") for c in cats]
    train = [s for c in cats for s in load_mvtec(c)[0]]
    det = create_detector(name, **params)
    t0 = time.perf_counter()
    det.fit(train)
    fit_s = time.perf_counter() - t0
    det.progress = False
    for c in cats:
        _, test = load_mvtec(c)
        result = det.score(test)
        timing = time_per_image(det, test, min(timing_images, len(test)))
        row = result_row(c, name, det, test, result, masks_for(test, result.maps) if result.maps else None,
                         fit_s, len(train), timing)
        rows.append(dict(row, setting="multiclass"))
    for setting in ("per-category", "multiclass"):
        part = [r for r in rows if r["setting"] == setting]
        mean = {k: float(np.nanmean([r[k] for r in part])) for k in METRICS}
        rows.append({**part[0], **mean, "category": "mean", "setting": setting})
    echo(format_table(rows))
    return rows


def run_fewshot_bench(
    root: str | Path, detectors: Sequence[str], params: dict[str, Any] | None = None,
    json_path: str | Path | None = None, timing_images: int = 20, shots: Sequence[int] | None = None,
    seeds: Sequence[int] = (0,), multiclass: bool = False, echo: Any = print,
) -> list[dict[str, Any]]:
    """Dispatch: multi-class, zero-shot (detectors with `zero_shot`), or few-shot over shots × seeds."""
    rows: list[dict[str, Any]] = []
    for name in detectors:
        if multiclass:
            rows += run_multiclass(root, name, dict(params or {}), timing_images, echo)
            continue
        for category in find_categories(root):
            if getattr(detector_class(name), "zero_shot", False):
                rows += run_zero_shot(category, name, dict(params or {}), timing_images, echo)
            else:
                ks = list(shots) if shots else [len(load_mvtec(category)[0])]
                rows += run_shots(category, name, dict(params or {}), ks, list(seeds), timing_images, echo)
    if json_path is not None:
        Path(json_path).write_text(json.dumps({"results": json_ready(rows)}, indent=2, allow_nan=False))
        echo(f"[bench] wrote {json_path}")
    return rows
