"""`normalcy bench`: fit and evaluate detectors on MVTec-layout folders and print the standard tables."""

from __future__ import annotations

import argparse
from typing import Any

from normalcy.apps.cli.common import (
    EXIT_OK,
    add_detector_options,
    build_detector,
    detector_params,
    ensure_writable,
)


def add_parser(sub: Any) -> None:
    p = sub.add_parser("bench", help="fit + evaluate detectors on MVTec-layout folders, print tables")
    p.add_argument("data", nargs="+",
                   help="category folders or roots of category folders (one row per set, then the mean)")
    p.add_argument("--json", help="write the results as JSON to this file")
    p.add_argument("--report", help="write a self-contained HTML report here: ROC/PR curves, per-defect-type table, "
                   "score histograms, calibration plot, worst false positives/negatives with overlays")
    p.add_argument("--timing-images", type=int, default=20, help="images timed at batch 1 (default 20)")
    p.add_argument("--shots", help="few-shot: numbers of train/good references, e.g. 1,2,4,8 (docs/fewshot.md)")
    p.add_argument("--seeds", help="few-shot: reference-sampling seeds, e.g. 0,1,2 (mean ± std reported)")
    p.add_argument("--multiclass", action="store_true", help="also fit one model on all categories together")
    add_detector_options(p)


def run(args: argparse.Namespace) -> int:
    from normalcy.apps.bench.images import run_image_bench
    from normalcy.detectors import detector_class
    from normalcy.errors import ParameterError

    detectors = [d.strip() for d in args.detector.split(",") if d.strip()]
    from normalcy.apps.cli.video import bench_video, is_video_detector

    if detectors and all(is_video_detector(d) for d in detectors):  # clips: normalcy/apps/bench/video.py
        return bench_video(args, detectors)
    for name in detectors:  # a typo in --param fails in one line now, not after the first category's fit
        build_detector(name, detector_params(args))
    ensure_writable(args.json, args.report)
    if args.shots or args.seeds or args.multiclass or any(getattr(detector_class(d), "zero_shot", False)
                                                          for d in detectors):
        from normalcy.apps.bench.fewshot import run_fewshot_bench
        from normalcy.errors import ParameterError

        if args.report:
            raise ParameterError("--report covers full-shot benches; drop --shots/--seeds/--multiclass or --report")

        ints = lambda text: [int(v) for v in text.split(",") if v.strip()] if text else None  # noqa: E731
        if len(args.data) > 1:
            raise ParameterError("few-shot, zero-shot and --multiclass bench take one data root at a time")
        run_fewshot_bench(args.data[0], detectors, detector_params(args), args.json, args.timing_images,
                          ints(args.shots), ints(args.seeds) or [0], args.multiclass)
        return EXIT_OK
    run_image_bench(args.data, detectors, detector_params(args), args.json, args.timing_images,
                    report_path=args.report)
    return EXIT_OK
