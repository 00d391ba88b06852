"""`normalcy synth`: write synthetic anomalies and masks in MVTec layout."""

from __future__ import annotations

import argparse
from typing import Any

from normalcy.apps.cli.common import EXIT_OK


def add_parser(sub: Any) -> None:
    p = sub.add_parser("synth", help="write synthetic anomalies + masks in MVTec layout (docs/synth.md)")
    p.add_argument("normal_dir", help="folder of normal images (e.g. a category's train/good)")
    p.add_argument("-o", "--out", required=True, help="output category folder (train/, test/, ground_truth/)")
    p.add_argument("--n", type=int, default=200, help="number of synthetic anomalies (default 200)")
    p.add_argument("--from-defects", help="real defects to transplant: MVTec layout or X.png + X_mask.png pairs")
    p.add_argument("--kinds", help="comma-separated: perlin,cutpaste,transplant (default: all that apply)")
    p.add_argument("--severity-levels", type=int, default=0,
                   help="grade size/contrast in levels 1..L and write severity.csv for `normalcy bench`")
    p.add_argument("--train-fraction", type=float, default=0.5,
                   help="share of the normal images linked to train/good, never used as bases (default 0.5)")
    p.add_argument("--blend", choices=("feather", "poisson"), default="feather", help="transplant blending")
    p.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    from normalcy.synth.folders import synthesize

    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip()) if args.kinds else None
    counts = synthesize(args.normal_dir, args.out, n=args.n, defect_dir=args.from_defects, seed=args.seed,
                        kinds=kinds, severity_levels=args.severity_levels, train_fraction=args.train_fraction,
                        blend=args.blend)
    print(f"wrote {sum(counts.values())} synthetic anomalies to {args.out} "
          f"({', '.join(f'{k}: {v}' for k, v in counts.items())}); `normalcy bench {args.out}` evaluates them")
    return EXIT_OK
