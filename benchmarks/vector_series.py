"""Compare settings of the series detector on NAB (how `SeriesDetector`'s defaults were chosen).

Same protocol as `bench-vector --series`: fit on NAB's probationary first 15 % of each labelled series, point
AUROC and composite event F1 on the rest, means over the 29 series. Each variant is `SeriesDetector(**params)`
with the detector's own calibration hold-out. Example (the table in docs/vector.md):

    OMP_NUM_THREADS=1 python benchmarks/vector_series.py '{"fit w32 k5": {"window": 32, "memory": "fit",
        "detector_params": {"n_neighbors": 5}}, "past w64 k2": {}}'
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np

from normalcy.apps.bench.vector import NAB_PROBATION
from normalcy.detectors.series import SeriesDetector, composite_f1, read_nab
from normalcy.metrics import auroc

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "series" / "nab"


def main() -> None:
    """Print mean point AUROC and event F1 of each variant (and of each series with --per-series)."""
    p = argparse.ArgumentParser()
    p.add_argument("variants", help='JSON: {"label": {SeriesDetector param: value}, ...}')
    p.add_argument("--folder", type=Path, default=DATA)
    p.add_argument("--per-series", action="store_true", help="also print each series' figures")
    args = p.parse_args()
    data = read_nab(args.folder)
    for label, params in json.loads(args.variants).items():
        start = time.perf_counter()
        aurocs, f1s = [], []
        for s in data:
            n_fit = int(len(s.values) * NAB_PROBATION)
            y = s.labels[n_fit:]
            if not 0 < y.sum() < y.size:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                scores = SeriesDetector(**params).fit(s.values[:n_fit]).score(s.values).scores[n_fit:]
            aurocs.append(auroc(y, scores))
            f1s.append(composite_f1(y, scores)["f1"])
            if args.per_series:
                print(f"  {s.name:60s} AUROC {aurocs[-1]:.3f}  event F1 {f1s[-1]:.3f}")
        print(f"{label:24s} AUROC {np.mean(aurocs):.4f}  event F1 {np.mean(f1s):.4f}  series {len(aurocs)}  "
              f"{time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
