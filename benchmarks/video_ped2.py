"""UCSD Ped2 table for the video detectors: frame AUROC (pooled and per-clip mean), pixel AUROC, fps, fit time.

    python benchmarks/video_ped2.py [--data ../shared/data/video/ucsd_ped2] [--detector video]
        [--param motion=diff] [--threads 2] [--json out.json] [--loco]

Fits on the 16 normal training clips, scores the 12 test clips frame by frame with maps (as `normalcy predict`
does), and reports the realized false-alarm rate on the test set's normal frames at the model's alpha. The same
evaluation runs as `normalcy bench ../shared/data/video/ucsd_ped2 --detector video`.

`--loco` adds a check of the calibration itself on the normal training clips (for `video`, whose score has no
trained parameters): each training clip in turn is scored against a calibration made of the other 15 clips, and
its realized false-alarm rate at alpha is printed. The spread across clips shows how much a whole clip's frames move
together (crowd density), which a per-frame alpha cannot promise for any single clip.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def leave_one_clip_out(data: Path, params: dict, alpha: float = 0.05) -> list[tuple[str, float]]:
    """(clip, realized false-alarm rate) for each normal training clip scored against the other clips' scores."""
    import numpy as np

    from normalcy.calibration.conformal import Calibration
    from normalcy.data.video import list_clips
    from normalcy.detectors import create_detector

    clips = list_clips(data / "train")
    # fitted on all clips only for the flow/difference normalisation (4 numbers); the calibration is rebuilt below
    det = create_detector("video", **params).fit(clips)
    scores = {c.name: det.score(c).scores for c in clips}
    out = []
    for name, own in scores.items():
        cal = Calibration(np.concatenate([v for k, v in scores.items() if k != name]), method="holdout")
        out.append((name, float(np.mean(cal.p_values(own) <= alpha))))
    return out


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
    ap.add_argument("--loco", action="store_true", help="also the leave-one-clip-out false-alarm check (video)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    run_video_bench(args.data, [d.strip() for d in args.detector.split(",") if d.strip()], dict(args.param),
                    args.json, threads=args.threads)
    if args.loco:
        import numpy as np

        rates = leave_one_clip_out(Path(args.data), dict(args.param))
        print("leave-one-clip-out false-alarm rate at alpha=0.05 per training clip: "
              + ", ".join(f"{k} {v:.3f}" for k, v in rates) + f"; mean {np.mean([v for _, v in rates]):.3f}")


if __name__ == "__main__":
    main()
