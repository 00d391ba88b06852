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
    """Fit on data/train, score data/test; frame AUROC (pooled, per clip), pixel AUROC, fps, fit time, false alarms."""
    from normalcy.data.images import read_mask
    from normalcy.data.video import list_clips
    from normalcy.detectors import create_detector
    from normalcy.metrics import auroc, pixel_auroc

    data = Path(data)
    for sub in ("train", "test"):
        if not (data / sub).is_dir():
            raise LayoutError(f"{data}: no {sub}/ folder of clips (layout: train/<clip>/, test/<clip>/, labels.csv)")
    labels = frame_labels(data)
    det = create_detector(detector, **(params or {}))
    t0 = time.perf_counter()
    det.fit(data / "train")
    fit_s = time.perf_counter() - t0
    scores, ys, per_clip, maps, masks, normal_flags = [], [], [], [], [], []
    n_frames, n_errors, score_s = 0, 0, 0.0
    gt = data / "ground_truth"
    for clip in list_clips(data / "test"):
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
        y = y[ok]
        scores.append(s)
        ys.append(y)
        normal_flags.extend(p.is_anomaly for p, lab in zip([p for p in preds if p.status == "ok"], y) if lab == 0)
        if 0 < y.sum() < len(y):
            per_clip.append(auroc(y, s))
        if gt.is_dir() and clip.video is None:
            for p, f in zip(preds, clip.frames):
                mask_file = gt / clip.name / (Path(f).stem + ".png")
                if p.status == "ok" and mask_file.is_file():
                    maps.append(p.anomaly_map.astype(np.float32))
                    masks.append(read_mask(mask_file) > 0)
    y_all, s_all = np.concatenate(ys), np.concatenate(scores)
    return {
        "detector": detector, "params": det.get_params(), "frames": n_frames, "error_frames": n_errors,
        "frame_auroc_pooled": auroc(y_all, s_all),
        "frame_auroc_per_clip_mean": float(np.mean(per_clip)) if per_clip else float("nan"),
        "clips_with_both_labels": len(per_clip),
        "pixel_auroc": pixel_auroc(masks, maps) if masks else float("nan"),
        "fps": n_frames / max(score_s, 1e-9), "fit_seconds": fit_s,
        "alpha": det.alpha, "false_alarm_rate_normal_test_frames": float(np.mean(normal_flags)) if normal_flags
        else float("nan"), "n_calibration_frames": int(det.calibration_.n),
    }


def print_table(results: list[dict[str, Any]], threads: int | None = None) -> None:
    """The Ped2-style markdown table, one row per detector."""
    fps = f"fps ({threads} threads)" if threads else "fps"
    print(f"| detector | frame AUROC pooled | per-clip mean | pixel AUROC | {fps} | fit s "
          "| false-alarm rate on normal test frames |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        changed = {k: v for k, v in r["params"].items() if k in r.get("changed", ())}
        name = r["detector"] + (f" {changed}" if changed else "")
        print(f"| {name} | {r['frame_auroc_pooled']:.4f} | {r['frame_auroc_per_clip_mean']:.4f} "
              f"({r['clips_with_both_labels']} clips) | {r['pixel_auroc']:.4f} | {r['fps']:.1f} | "
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
