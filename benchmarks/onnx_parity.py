"""Torch vs onnxruntime on real images: fit on a subsample, export, score the same test images both ways.

Usage: OMP_NUM_THREADS=1 python benchmarks/onnx_parity.py ../shared/data/magnetic_tile [--train 100] [--test 50]
       [--detectors patchcore,padim] [--out onnx-parity]
Prints, per detector, the largest absolute difference of image scores and of anomaly maps (raw, and divided by the
median calibration score so detectors on different scales compare), and whether p-values, decisions and masks
agree. Keeps the fitted .normalcy and exported .onnx files in --out for benchmarks/onnx_latency.py.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

import normalcy
from normalcy.apps.export import export_onnx, load_onnx
from normalcy.data import as_rgb_array, load_mvtec


def subsample(items: list, n: int, seed: int) -> list:
    """A seeded subsample of `n` items in their original order."""
    rng = np.random.default_rng(seed)
    return [items[i] for i in sorted(rng.choice(len(items), min(n, len(items)), replace=False))]


def compare(name: str, train: list, images: list[np.ndarray], out: Path) -> None:
    """Fit, save, export, score both ways and print one row of differences."""
    t0 = time.perf_counter()
    det = normalcy.create_detector(name, progress=False).fit(train)
    det.save(out / f"{name}.normalcy")
    path = export_onnx(det, out / f"{name}.onnx")
    ort_model = load_onnx(path, threads=torch.get_num_threads())
    a, b = det.score(images), ort_model.score(images)
    scale = float(np.median(det.calibration_.scores))
    d_score = float(np.abs(a.scores - b.scores).max())
    d_map = max(float(np.abs(x - y).max()) for x, y in zip(a.maps, b.maps)) if a.maps else float("nan")
    top_map = max(float(np.abs(x).max()) for x in a.maps) if a.maps else float("nan")
    pa, pb = det.decide(a), ort_model.decide(b)
    same_p = sum(x.p_value == y.p_value for x, y in zip(pa, pb))
    same_flag = sum(x.is_anomaly == y.is_anomaly for x, y in zip(pa, pb))
    mask_px = sum(int((x.mask != y.mask).sum()) for x, y in zip(pa, pb) if x.mask is not None)
    total_px = sum(x.mask.size for x in pa if x.mask is not None)
    print(f"| {name} | {len(images)} | {d_score:.2e} | {d_map:.2e} | {d_score / scale:.1e} | {d_map / scale:.1e} | "
          f"{scale:.2f} / {float(a.scores.max()):.1f} / {top_map:.1f} | {same_p}/{len(pa)} | {same_flag}/{len(pa)} | "
          f"{mask_px}/{total_px} | {path.stat().st_size / 2**20:.1f} | {time.perf_counter() - t0:.0f}s |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("--train", type=int, default=100)
    ap.add_argument("--test", type=int, default=50)
    ap.add_argument("--detectors", default="patchcore,padim")
    ap.add_argument("--out", default="onnx-parity")
    args = ap.parse_args()
    train, test = load_mvtec(args.data)
    train, test = subsample(train, args.train, 0), subsample(test, args.test, 1)
    images = [as_rgb_array(s) for s in test]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"{len(train)} train, {len(test)} test images ({sum(s.label for s in test)} defective), "
          f"torch threads {torch.get_num_threads()}")
    print("| detector | images | max abs Δ score | max abs Δ map | Δ score / median cal | Δ map / median cal | "
          "median cal / max score / max map | same p-value | same decision | mask pixels differing | "
          "ONNX MiB | time |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.detectors.split(","):
        compare(name.strip(), train, images, out)


if __name__ == "__main__":
    main()
