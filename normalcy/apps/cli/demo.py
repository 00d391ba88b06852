"""`normalcy demo`: write the synthetic inspection set, fit, evaluate and write overlays."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from normalcy.apps.cli.common import EXIT_OK


def add_parser(sub: Any) -> None:
    p = sub.add_parser("demo", help="generate a synthetic inspection set, fit, evaluate, write overlays")
    p.add_argument("-o", "--out", default="normalcy-demo", help="output folder (default ./normalcy-demo)")
    p.add_argument("--detector", default="patchcore")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backbone", default=None, help="the detector's backbone (default: the detector's own)")


def run(args: argparse.Namespace) -> int:
    from normalcy.apps.demo import run_demo

    params = {"backbone": args.backbone} if args.backbone else None
    run_demo(Path(args.out), detector=args.detector, seed=args.seed, params=params)
    return EXIT_OK
