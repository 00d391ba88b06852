"""`normalcy discover`: cluster the anomalous regions of flagged images into defect types."""

from __future__ import annotations

import argparse
from typing import Any

from normalcy.apps.cli.common import EXIT_OK


def add_parser(sub: Any) -> None:
    p = sub.add_parser("discover", help="cluster the anomalous regions of flagged images into defect types")
    p.add_argument("data", help="an MVTec category (test images, scored against true types) or a folder of images")
    p.add_argument("--model", help="a .normalcy model (default: fit PatchCore on DATA/train/good)")
    p.add_argument("--json", required=True, help="write the report (k, nmi, ari, accuracy, assignments) here")
    p.add_argument("-o", "--out", required=True, help="folder for one contact sheet PNG per cluster")
    p.add_argument("--k", type=int, help="number of clusters (default: chosen by silhouette over 2..10)")
    p.add_argument("--alpha", type=float, help="false-alarm rate that decides which images are flagged")
    p.add_argument("--pixel-fpr", type=float, help="pixel false-positive rate of the region masks (default 0.001)")
    p.add_argument("--fit-images", type=int, default=150,
                   help="without --model: seeded subsample of train/good to fit on (0 = all; default 150)")
    p.add_argument("--image-size", type=int, help="without --model: network input size (default 256)")
    p.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    from normalcy.explain.discover import discover, write_report

    report = discover(args.data, args.out, model=args.model, k=args.k, alpha=args.alpha, pixel_fpr=args.pixel_fpr,
                      n_fit=args.fit_images, seed=args.seed,
                      detector_params={"image_size": args.image_size} if args.image_size else None)
    write_report(report, args.json)
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    print(f"{report['n_regions']} regions -> k={report['k']} clusters; NMI {fmt(report['nmi'])}, "
          f"ARI {fmt(report['ari'])}, accuracy {fmt(report['accuracy'])}; sheets in {args.out}, report {args.json}")
    return EXIT_OK
