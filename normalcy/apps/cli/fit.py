"""`normalcy fit`: fit a detector on normal data and save one model file."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from normalcy.apps.cli.common import (
    EXIT_OK,
    add_detector_options,
    build_detector,
    detector_params,
    ensure_writable,
    normal_images_of,
)


def add_parser(sub: Any) -> None:
    p = sub.add_parser("fit", help="fit a detector on normal images and save one model file")
    p.add_argument("data", help="normal data: an MVTec category folder (uses train/good), a folder of images, a "
                   "table (.csv/.parquet/.npz), a text file (one text per line) or a series (CSV + --time-column)")
    p.add_argument("-o", "--out", required=True, help="model file to write, e.g. model.normalcy")
    p.add_argument("--alpha", type=float, help="target false-alarm rate stored as the default (0.05)")
    p.add_argument("--from-db", help="also train on the images people confirmed normal in a `normalcy serve --db "
                   "--keep-images` history (SQLite file or URL); for semisup, confirmed anomalies become labelled ones")
    p.add_argument("--groups", help="calibrate per group so each keeps its own false-alarm rate "
                   "(docs/calibration.md): 'auto' (normal modes found by k-means), 'subfolders' (the folder holding "
                   "each image; sub-folders are searched) or a CSV file with columns path,group")
    p.add_argument("--refine", action="store_true", help="images: also fit the second, closer look that "
                   "`normalcy predict --refine` gives images near alpha (tiles at higher resolution)")
    p.add_argument("--history-dir", help="that history's picture folder (default: beside a SQLite file)")
    add_detector_options(p)
    from normalcy.apps.cli.modalities import add_fit_options

    add_fit_options(p)


def run(args: argparse.Namespace) -> int:
    data = Path(args.data)
    from normalcy.apps.cli.video import fit_video, is_video_detector

    if is_video_detector(args.detector):  # a folder of normal clips: normalcy/apps/cli/video.py
        return fit_video(args)
    from normalcy.apps.cli.modalities import fit_modality, modality_of

    modality = modality_of(data, args)
    if modality != "image":  # a table, text file or series: normalcy/apps/cli/modalities.py
        det = fit_modality(data, modality, args)
        path = det.save(args.out)
        print(f"saved {path} (calibration: {det.calibration_.method}, {det.calibration_.n} normal scores; "
              f"alpha={det.alpha})")
        return EXIT_OK
    det = build_detector(args.detector, detector_params(args))
    ensure_writable(args.out)
    if getattr(args, "groups", None) == "subfolders":  # the groups are the sub-folders: search them
        from normalcy.data import load_folder

        train = load_folder(data / "train" / "good" if (data / "train" / "good").is_dir() else data, recursive=True)
    else:
        train = normal_images_of(data)
    anomalies = _from_db(args, train) if getattr(args, "from_db", None) else None
    print(f"fitting {args.detector} on {len(train)} normal images from {data}")
    groups = {"groups": args.groups} if getattr(args, "groups", None) else {}
    if getattr(args, "refine", False):
        import inspect

        from normalcy.errors import ParameterError

        if "refine" not in inspect.signature(det.fit).parameters:
            raise ParameterError(f"--refine: {args.detector} has no second look; use a feature-based image detector "
                                 "(patchcore, padim)")
        groups["refine"] = True
    if anomalies:
        det.fit(train, anomalies=anomalies)
    else:
        det.fit(train, **groups)
    path = det.save(args.out)
    cal = det.calibration_
    groups_note = f", groups: {', '.join(f'{g} ({c.n})' for g, c in sorted(cal.groups.items()))}" if cal.groups else ""
    print(f"saved {path} (calibration: {cal.method}, {cal.n} normal scores{groups_note}; alpha={det.alpha})")
    return EXIT_OK


def _from_db(args: argparse.Namespace, train: list) -> list | None:
    """Add the history's confirmed-normal images to `train`; confirmed anomalies for semisup (else None)."""
    from normalcy.apps.serve.history.feedback import confirmed_images

    normals, skipped = confirmed_images(args.from_db, "normal", history_dir=args.history_dir)
    train.extend(normals)
    print(f"+ {len(normals)} confirmed-normal images from the history {args.from_db}")
    anomalies = None
    if args.detector == "semisup":
        anomalies, more = confirmed_images(args.from_db, "anomaly", history_dir=args.history_dir)
        skipped += more
        print(f"+ {len(anomalies)} confirmed anomalies as labelled anomalies")
    for reason in skipped[:5]:
        print(f"  skipped {reason}")
    if len(skipped) > 5:
        print(f"  ... and {len(skipped) - 5} more skipped")
    return anomalies or None
