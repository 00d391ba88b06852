"""UCSD Ped2 table for the video detectors: frame AUROC (pooled and per-clip mean), pixel AUROC, fps, fit time.

    python benchmarks/video_ped2.py [--data ../shared/data/video/ucsd_ped2] [--detector video]
        [--param motion=diff] [--threads 2] [--json out.json]

Fits on the 16 normal training clips, scores the 12 test clips frame by frame with maps (as `normalcy predict`
does), and reports the realized false-alarm rate on the test set's normal frames at the model's alpha. The same
evaluation runs as `normalcy bench ../shared/data/video/ucsd_ped2 --detector video`.
"""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> None:
    import torch

    from normalcy.apps.bench.video import run_video_bench
    from normalcy.apps.cli.common import parse_param

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/video/ucsd_ped2")
    ap.add_argument("--detector", default="video", help="registered video detector name(s), comma separated")
    ap.add_argument("--param", action="append", type=parse_param, default=[], metavar="KEY=VALUE")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the speed target is 2 cores)")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    run_video_bench(args.data, [d.strip() for d in args.detector.split(",") if d.strip()], dict(args.param),
                    args.json, threads=args.threads)


if __name__ == "__main__":
    main()
