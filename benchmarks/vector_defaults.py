"""Compare settings of one vector detector on every `.npz` set (how normalcy's defaults were chosen).

Same protocol as the benchmark (stratified 70/30 splits, fit on the normal rows of the 70 % part), no
calibration split so each variant sees the same rows. Example:

    python benchmarks/vector_defaults.py knn '{"mean": {}, "largest": {"method": "largest"}}' --seeds 3
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np

from normalcy.apps.bench.vector import stratified_split
from normalcy.data.tables import read_table
from normalcy.detectors.vector import create_vector_detector
from normalcy.metrics import auroc, average_precision

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "tabular"


def main() -> None:
    """Print per-dataset AUROC of each variant and the means."""
    p = argparse.ArgumentParser()
    p.add_argument("detector")
    p.add_argument("variants", help='JSON: {"label": {param: value}, ...}')
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--folder", type=Path, default=DATA)
    args = p.parse_args()
    variants = json.loads(args.variants)
    totals: dict[str, list[tuple[float, float]]] = {k: [] for k in variants}
    for path in sorted(args.folder.glob("*.npz")):
        t = read_table(path)
        per = {k: [] for k in variants}
        for seed in range(args.seeds):
            train, test = stratified_split(t.y, seed)
            X_fit = t.X[train][t.y[train] == 0]
            for label, params in variants.items():
                det = create_vector_detector(args.detector, seed=seed, calibration_fraction=0.0, **params)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    s = det.fit(X_fit).score(t.X[test]).scores
                per[label].append((auroc(t.y[test], s), average_precision(t.y[test], s)))
        cells = []
        for label, vals in per.items():
            m = np.mean(vals, axis=0)
            totals[label].append(tuple(m))
            cells.append(f"{label}={m[0]:.3f}")
        print(f"{path.stem:22s} " + " ".join(cells), flush=True)
    for label, vals in totals.items():
        m = np.mean(vals, axis=0)
        print(f"MEAN {label:20s} AUROC {m[0]:.4f}  AP {m[1]:.4f}")


if __name__ == "__main__":
    main()
