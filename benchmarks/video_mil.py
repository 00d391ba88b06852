"""Weakly supervised MIL ranking (`video-mil`) on UCSD Ped2 with a two-fold split of the test clips.

    python benchmarks/video_mil.py [--data ../shared/data/video/ucsd_ped2] [--param epochs=60] [--threads 2]
        [--json out.json]

Protocol. Every Ped2 test clip contains an anomaly, so the weakly labelled training set is: the 16 normal training
clips (label 0; every 4th is held out of training to calibrate) plus half of the test clips (label 1, with no frame
labels). Half A is the odd-numbered test clips (Test001, 003, ..., 011), half B the even-numbered ones. Fold 1 trains
on A and evaluates on B; fold 2 the other way round. Each fold reports frame AUROC pooled over its evaluation clips,
the per-clip mean, pixel AUROC and the region metric; the last row averages the two folds. For comparison, the
unsupervised `video` detector (fitted on the normal clips only) is scored on the same evaluation halves.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

KEYS = ("frame_auroc_pooled", "frame_auroc_per_clip_mean", "pixel_auroc", "region_precision", "object_recall",
        "fps", "fit_seconds", "false_alarm_rate_normal_test_frames")


def run(data: Path, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Both folds for video-mil and the unsupervised video detector; one dict of figures per (detector, fold)."""
    from normalcy.apps.bench.video import score_test_clips
    from normalcy.data.video import list_clips
    from normalcy.detectors import create_detector

    train = list_clips(data / "train")
    test = list_clips(data / "test")
    halves = {"A": test[0::2], "B": test[1::2]}
    t0 = time.perf_counter()
    unsupervised = create_detector("video").fit(train)
    video_fit = time.perf_counter() - t0
    rows = []
    for fit_half, eval_half in (("A", "B"), ("B", "A")):
        det = create_detector("video-mil", **params)
        t0 = time.perf_counter()
        det.fit(train + halves[fit_half], [0] * len(train) + [1] * len(halves[fit_half]))
        fit_s = time.perf_counter() - t0
        for name, model, seconds in (("video-mil", det, fit_s), ("video", unsupervised, video_fit)):
            r = score_test_clips(model, data, halves[eval_half])
            rows.append({"detector": name, "fold": f"fit {fit_half}, evaluate {eval_half}", "fit_seconds": seconds,
                         "eval_clips": [c.name for c in halves[eval_half]], **r})
    return rows


def main(argv: list[str] | None = None) -> None:
    import numpy as np
    import torch

    from normalcy.apps.cli.common import parse_param

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/video/ucsd_ped2")
    ap.add_argument("--param", action="append", type=parse_param, default=[], metavar="KEY=VALUE")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the speed target is 2 cores)")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = run(Path(args.data), dict(args.param))
    print("| detector | fold | frame AUROC pooled | per-clip mean | pixel AUROC | region precision / object recall "
          "| fps | fit s | false alarms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in ("video-mil", "video"):
        mine = [r for r in rows if r["detector"] == name]
        mean = {k: float(np.mean([r[k] for r in mine])) for k in KEYS}
        for r in [*mine, {"fold": "mean of both folds", **mean}]:
            print(f"| {name} | {r['fold']} | {r['frame_auroc_pooled']:.4f} | {r['frame_auroc_per_clip_mean']:.4f} | "
                  f"{r['pixel_auroc']:.4f} | {r['region_precision']:.3f} / {r['object_recall']:.3f} | "
                  f"{r['fps']:.1f} | {r['fit_seconds']:.1f} | {r['false_alarm_rate_normal_test_frames']:.3f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2, default=str))


if __name__ == "__main__":
    main()
