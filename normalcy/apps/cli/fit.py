"""`normalcy fit`: fit a detector on normal data and save one model file."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from normalcy.apps.cli.common import EXIT_OK, add_detector_options, detector_params, normal_images_of


def add_parser(sub: Any) -> None:
    p = sub.add_parser("fit", help="fit a detector on normal images and save one model file")
    p.add_argument("data", help="an MVTec category folder (uses train/good) or a folder of normal images")
    p.add_argument("-o", "--out", required=True, help="model file to write, e.g. model.normalcy")
    p.add_argument("--alpha", type=float, help="target false-alarm rate stored as the default (0.01)")
    add_detector_options(p)


def run(args: argparse.Namespace) -> int:
    from normalcy.detectors import create_detector

    data = Path(args.data)
    train = normal_images_of(data)
    det = create_detector(args.detector, **detector_params(args))
    print(f"fitting {args.detector} on {len(train)} normal images from {data}")
    det.fit(train)
    path = det.save(args.out)
    cal = det.calibration_
    print(f"saved {path} (calibration: {cal.method}, {cal.n} normal scores; alpha={det.alpha})")
    return EXIT_OK
