"""Compare how images of other aspect ratios are fitted into the square input (stretch vs pad) on one folder.

Usage: python benchmarks/resize_modes.py ../shared/data/magnetic_tile [--train 200] [--test 200]
Prints image/pixel AUROC and AUPRO per mode on the same random subsample (seeded), fitted and scored in one run.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from normalcy import metrics
from normalcy.apps.bench.images import masks_for
from normalcy.data import load_mvtec
from normalcy.detectors.image.patchcore import PatchCore


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("--train", type=int, default=200)
    ap.add_argument("--test", type=int, default=200)
    ap.add_argument("--modes", default="stretch,pad")
    args = ap.parse_args()
    train, test = load_mvtec(args.data)
    rng = np.random.default_rng(0)
    train = [train[i] for i in sorted(rng.choice(len(train), min(args.train, len(train)), replace=False))]
    test = [test[i] for i in sorted(rng.choice(len(test), min(args.test, len(test)), replace=False))]
    labels = np.array([s.label for s in test])
    print(f"{len(train)} train, {len(test)} test ({labels.sum()} defective)")
    for mode in args.modes.split(","):
        t0 = time.perf_counter()
        det = PatchCore(resize_mode=mode, progress=False, calibration_fraction=0.0).fit(train)
        res = det.score(test)
        row = metrics.image_metrics(labels, res.scores)
        row.update(metrics.pixel_metrics(masks_for(test, res.maps), res.maps))
        print(f"{mode:8s} " + " ".join(f"{k}={v:.4f}" for k, v in row.items()) + f"  ({time.perf_counter() - t0:.0f}s)",
              flush=True)


if __name__ == "__main__":
    main()
