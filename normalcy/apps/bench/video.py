"""`normalcy bench` on a video folder: fit on normal clips, score every test frame, print the standard table.

Layout (UCSD Ped2's): `train/<clip>/` normal clips, `test/<clip>/` clips to score, `labels.csv` with columns
clip,frame,label (1 = anomalous frame, frames numbered from 1 in file order), optional `ground_truth/<clip>/<frame
stem>.png` masks for pixel AUROC. Frame AUROC is pooled over all test frames (the usual protocol); the per-clip
mean covers clips that hold both normal and anomalous frames.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from normalcy.errors import LayoutError


def frame_labels(data: Path) -> dict[str, np.ndarray]:
    """Clip -> 0/1 label per frame from labels.csv, in frame order."""
    path = data / "labels.csv"
    if not path.is_file():
        raise LayoutError(f"{data}: no labels.csv (columns clip,frame,label) to evaluate the test clips against")
    rows: dict[str, list[tuple[int, int]]] = {}
    with open(path, newline="") as fh:
        for r in csv.DictReader(fh):
            rows.setdefault(r["clip"], []).append((int(r["frame"]), int(r["label"])))
    return {k: np.asarray([lab for _, lab in sorted(v)]) for k, v in rows.items()}


def evaluate_video(data: str | Path, detector: str = "video", params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fit on data/train, score data/test; frame AUROC (pooled, per clip), pixel AUROC, regions, fps, fit time."""
    from normalcy.data.video import list_clips
    from normalcy.detectors import create_detector

    data = Path(data)
    for sub in ("train", "test"):
        if not (data / sub).is_dir():
            raise LayoutError(f"{data}: no {sub}/ folder of clips (layout: train/<clip>/, test/<clip>/, labels.csv)")
    det = create_detector(detector, **(params or {}))
    t0 = time.perf_counter()
    det.fit(data / "train")
    fit_s = time.perf_counter() - t0
    return {"detector": detector, "params": det.get_params(), "fit_seconds": fit_s,
            **score_test_clips(det, data, list_clips(data / "test"))}


def score_test_clips(det: Any, data: Path, clips: list[Any]) -> dict[str, Any]:
    """Score these labelled clips with a fitted video detector: frame, pixel and region metrics, false alarms, fps.

    Region metric at the model's alpha and pixel_fpr: a flagged frame's calibrated mask is split into connected
    regions. Region precision is the share of those regions that overlap the true mask. Object recall is the share
    of true objects (connected parts of the ground-truth masks, in all anomalous frames) that a region overlaps.
    """
    from normalcy.data.images import read_mask
    from normalcy.metrics import auroc, pixel_auroc

    labels = frame_labels(data)
    scores, ys, per_clip, maps, masks, false_alarms = [], [], [], [], [], {}
    n_frames, n_errors, score_s = 0, 0, 0.0
    regions = {"regions": 0, "regions_on_object": 0, "objects": 0, "objects_found": 0}
    gt = data / "ground_truth"
    for clip in clips:
        if clip.name not in labels:
            raise LayoutError(f"{data / 'labels.csv'} has no rows for test clip {clip.name}")
        t1 = time.perf_counter()
        preds = [p for _, p in det.predict_frames(clip)]
        score_s += time.perf_counter() - t1
        n_frames += len(preds)
        y = labels[clip.name]
        if len(preds) != len(y):
            raise LayoutError(f"{clip.name}: {len(preds)} frames but labels.csv has {len(y)} rows")
        ok = np.array([p.status == "ok" for p in preds])
        n_errors += int((~ok).sum())
        s = np.array([p.score for p in preds])[ok]
        scores.append(s)
        ys.append(y[ok])
        flagged = np.array([p.is_anomaly for p in preds])
        if (ok & (y == 0)).any():
            false_alarms[clip.name] = [int((flagged & ok & (y == 0)).sum()), int((ok & (y == 0)).sum())]
        if 0 < y[ok].sum() < ok.sum():
            per_clip.append(auroc(y[ok], s))
        if gt.is_dir() and clip.video is None:
            for p, f in zip(preds, clip.frames):
                mask_file = gt / clip.name / (Path(f).stem + ".png")
                if p.status == "ok" and mask_file.is_file():
                    truth = read_mask(mask_file) > 0
                    maps.append(p.anomaly_map.astype(np.float32))
                    masks.append(truth)
                    _count_regions(regions, p, truth)
    y_all, s_all = np.concatenate(ys), np.concatenate(scores)
    n_fa = sum(v[0] for v in false_alarms.values())
    n_normal = sum(v[1] for v in false_alarms.values())
    return {
        "frames": n_frames, "error_frames": n_errors,
        "frame_auroc_pooled": auroc(y_all, s_all),
        "frame_auroc_per_clip_mean": float(np.mean(per_clip)) if per_clip else float("nan"),
        "clips_with_both_labels": len(per_clip),
        "pixel_auroc": pixel_auroc(masks, maps) if masks else float("nan"),
        "region_precision": regions["regions_on_object"] / regions["regions"] if regions["regions"] else float("nan"),
        "object_recall": regions["objects_found"] / regions["objects"] if regions["objects"] else float("nan"),
        **regions,
        "fps": n_frames / max(score_s, 1e-9),
        "alpha": det.alpha, "false_alarm_rate_normal_test_frames": n_fa / n_normal if n_normal else float("nan"),
        "false_alarms_by_clip": false_alarms, "n_calibration_frames": int(det.calibration_.n),
    }


def _count_regions(counts: dict[str, int], pred: Any, truth: np.ndarray) -> None:
    """Add one frame's flagged regions and true objects to the region-metric counts."""
    import scipy.ndimage as ndi

    objects, n_obj = ndi.label(truth)
    counts["objects"] += n_obj
    if not (pred.is_anomaly and pred.mask is not None and pred.mask.any()):
        return
    flagged, n_reg = ndi.label(pred.mask)
    counts["regions"] += n_reg
    counts["regions_on_object"] += len(np.unique(flagged[truth & (flagged > 0)]))
    counts["objects_found"] += len(np.unique(objects[pred.mask & (objects > 0)]))


def print_table(results: list[dict[str, Any]], threads: int | None = None) -> None:
    """The Ped2-style markdown table, one row per detector."""
    fps = f"fps ({threads} threads)" if threads else "fps"
    print(f"| detector | frame AUROC pooled | per-clip mean | pixel AUROC | region precision / object recall | {fps} "
          "| fit s | false-alarm rate on normal test frames |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        changed = {k: v for k, v in r["params"].items() if k in r.get("changed", ())}
        name = r["detector"] + (f" {changed}" if changed else "")
        print(f"| {name} | {r['frame_auroc_pooled']:.4f} | {r['frame_auroc_per_clip_mean']:.4f} "
              f"({r['clips_with_both_labels']} clips) | {r['pixel_auroc']:.4f} | "
              f"{r['region_precision']:.3f} / {r['object_recall']:.3f} | {r['fps']:.1f} | "
              f"{r['fit_seconds']:.1f} | {r['false_alarm_rate_normal_test_frames']:.3f} (alpha={r['alpha']}) |")


def run_video_bench(data: str | Path, detectors: list[str], params: dict[str, Any], json_path: str | None = None,
                    threads: int | None = None) -> list[dict[str, Any]]:
    """Evaluate each detector on one video folder, print the table, optionally write JSON."""
    results = []
    for name in detectors:
        r = evaluate_video(data, name, params)
        r["changed"] = sorted(params)
        results.append(r)
    print_table(results, threads)
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=2, default=str))
    return results
