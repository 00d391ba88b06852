"""Video on the command line: `fit`, `predict` and `bench` when the detector is a video one (docs/video.md).

`predict` writes one row per frame to results.csv / results.jsonl (clip, frame, score, p_value, decision, severity,
regions, status, error; an unreadable frame is an error row and the rest of its clip is still scored) and, for each
flagged segment of consecutive anomalous frames, one PNG strip of overlays in `segments/`.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from normalcy.apps.cli.common import EXIT_OK, EXIT_SOME_FAILED, build_detector, detector_params, ensure_writable

FIELDS = ("clip", "frame", "score", "p_value", "is_anomaly", "decision", "severity", "regions", "status", "error")
STRIP_FRAMES = 8  # overlays per segment strip (evenly spaced over the segment)
THUMB_HEIGHT = 120  # rows of each overlay in a strip
SEGMENT_CAP = 600  # thumbnails kept per open segment (bounds memory on very long segments)


def is_video_detector(name: str) -> bool:
    """True when a registered detector name is a video detector."""
    from normalcy.detectors import detector_class
    from normalcy.errors import ParameterError

    try:
        return getattr(detector_class(name), "kind", "") == "video"
    except ParameterError:  # an unknown name is reported by the command's usual path
        return False


def fit_video(args: argparse.Namespace) -> int:
    """`normalcy fit CLIPS_DIR -o m.normalcy --detector video`."""
    det = build_detector(args.detector, detector_params(args))
    ensure_writable(args.out)
    print(f"fitting {args.detector} on the normal clips in {args.data}")
    det.fit(args.data)
    path = det.save(args.out)
    print(f"saved {path} ({det.n_fit_} clips, {det.calibration_.n} normal calibration frames; alpha={det.alpha})")
    return EXIT_OK


def _row(clip: str, pred: Any, regions: list) -> dict[str, Any]:
    d = pred.to_dict()
    return {"clip": clip, "frame": pred.path, "score": d["score"], "p_value": d["p_value"],
            "is_anomaly": d["is_anomaly"], "decision": d["decision"], "severity": d["severity"],
            "regions": regions, "status": d["status"], "error": d["error"]}


class _Strips:
    """Collects overlays of the current flagged segment and writes its strip when the segment ends."""

    def __init__(self, folder: Path | None, calibration: Any) -> None:
        from normalcy.explain.overlay import display_range

        self.folder, self.cal = folder, calibration
        self.vmin, self.vmax = display_range(calibration)
        self.clip, self.frames, self.thumbs, self.written = "", [], [], 0

    def add(self, clip: str, frame: Any, pred: Any) -> None:
        if self.folder is None:
            return
        if clip != self.clip or not (pred.status == "ok" and pred.is_anomaly):
            self.close()
        if pred.status != "ok" or not pred.is_anomaly or frame.image is None:
            return
        from normalcy.explain.overlay import overlay

        self.clip = clip
        self.frames.append(pred.path)
        if len(self.thumbs) < SEGMENT_CAP:
            img = overlay(frame.image, pred.anomaly_map, self.vmin, self.vmax, mask=pred.mask)
            w = max(1, round(img.width * THUMB_HEIGHT / img.height))
            self.thumbs.append(np.asarray(img.resize((w, THUMB_HEIGHT))))

    def close(self) -> None:
        if not self.thumbs:
            self.frames = []
            return
        from PIL import Image

        from normalcy.data.files import atomic_path

        pick = np.unique(np.linspace(0, len(self.thumbs) - 1, min(STRIP_FRAMES, len(self.thumbs))).round().astype(int))
        strip = np.concatenate([self.thumbs[i] for i in pick], axis=1)
        name = f"{self.clip}_{Path(str(self.frames[0])).stem}-{Path(str(self.frames[-1])).stem}.png"
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.folder / name) as tmp:
            Image.fromarray(strip).save(tmp, format="PNG")
        self.written += 1
        self.frames, self.thumbs = [], []


def predict_video(model: Any, args: argparse.Namespace) -> int:
    """`normalcy predict m.normalcy CLIPS... -o out/`: per-frame rows + one overlay strip per flagged segment."""
    from normalcy.data.files import atomic_path
    from normalcy.explain.regions import describe_regions

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    strips = _Strips(None if args.no_images else out / "segments", model.calibration_)
    n_rows = n_failed = n_flagged = 0
    with atomic_path(out / "results.csv") as tmp_csv, atomic_path(out / "results.jsonl") as tmp_jsonl, \
            open(tmp_csv, "w", newline="") as fc, open(tmp_jsonl, "w") as fj:
        writer = csv.DictWriter(fc, fieldnames=FIELDS)
        writer.writeheader()
        for inp in args.inputs:
            for clip, frame, pred in model.iter_results(inp, alpha=args.alpha, pixel_fpr=args.pixel_fpr):
                regions = describe_regions(pred.mask, pred.anomaly_map, model.calibration_) \
                    if pred.status == "ok" and pred.is_anomaly else []
                row = _row(clip, pred, regions)
                writer.writerow(row | {"regions": json.dumps(regions)})
                fj.write(json.dumps(row) + "\n")
                strips.add(clip, frame, pred)
                n_rows += 1
                n_failed += pred.status != "ok"
                n_flagged += bool(pred.status == "ok" and pred.is_anomaly)
        strips.close()
    print(f"{n_rows} frames scored into {out}/results.csv and results.jsonl: {n_flagged} flagged, {n_failed} failed; "
          f"{strips.written} segment strips in {out}/segments/")
    return EXIT_SOME_FAILED if n_failed else EXIT_OK


def bench_video(args: argparse.Namespace, detectors: list[str]) -> int:
    """`normalcy bench VIDEO_DIR --detector video`: the Ped2-style table (apps/bench/video.py)."""
    from normalcy.apps.bench.video import run_video_bench
    from normalcy.errors import ParameterError

    if len(args.data) > 1:
        raise ParameterError("the video bench takes one folder (train/, test/, labels.csv) at a time")
    ensure_writable(args.json)
    run_video_bench(args.data[0], detectors, detector_params(args), args.json, threads=args.threads)
    return EXIT_OK
