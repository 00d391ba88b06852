"""ONNX parity and speed on the default PatchCore of a full category (large bank → its own IVF search).

Usage: python benchmarks/onnx_default_model.py ../shared/data/magnetic_tile --out /tmp/onnx-default [--n-test 57]

Fits `PatchCore()` with every default on the category's whole train/good (or reuses OUT/default.normalcy), exports
it twice: as `normalcy export` does (IVF search in the graph: same lists and probes) and, for comparison, with exact
search in the graph (how IVF models were exported before), then scores a seeded subsample of the test images with
torch and both ONNX files, one thread each, and prints the differences and `score()` times. Whole-process time and
peak memory of `normalcy predict` with each file: run `/usr/bin/time -v normalcy --threads 1 predict MODEL
OUT/images -o OUT/pred` on the files and the image folder this script leaves in OUT.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import normalcy
import normalcy.apps.export.graph as graph_module
from normalcy.apps.export import export_onnx, load_onnx
from normalcy.data import load_mvtec


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("category")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n-test", type=int, default=57)
    args = ap.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    model_path = args.out / "default.normalcy"
    train, test = load_mvtec(args.category)
    if not model_path.exists():
        t0 = time.perf_counter()
        det = normalcy.PatchCore().fit(train)
        print(f"fitted PatchCore() on {len(train)} images in {time.perf_counter() - t0:.0f} s")
        det.save(model_path)
    det = normalcy.load(model_path)
    det.progress = False
    print(f"bank {tuple(det.memory_bank_.shape)}, search {det._search_mode(det.memory_bank_.shape[0])}, "
          f"n_probe {det.n_probe}, calibration {det.calibration_.method} on {det.calibration_.n} scores")
    t0 = time.perf_counter()
    export_onnx(det, args.out / "default.onnx")
    print(f"export (IVF graph) {time.perf_counter() - t0:.1f} s")
    original = graph_module.search_mode
    graph_module.search_mode = lambda d: "exact"  # the previous export: exact search over the whole bank
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            export_onnx(det, args.out / "exact.onnx")
    finally:
        graph_module.search_mode = original
    pick = sorted(np.random.default_rng(0).choice(len(test), min(args.n_test, len(test)), replace=False))
    images = args.out / "images"
    images.mkdir(exist_ok=True)
    for i in pick:
        link = images / f"{test[i].defect_type}__{test[i].path.name}"
        if not link.exists():
            os.symlink(test[i].path.resolve(), link)
    paths = sorted(images.iterdir())
    median = float(np.median(det.calibration_.scores))
    runs = {}
    for name, model in [("torch", det), ("onnx (IVF graph)", load_onnx(args.out / "default.onnx", threads=1)),
                        ("onnx (exact graph)", load_onnx(args.out / "exact.onnx", threads=1))]:
        t0 = time.perf_counter()
        result = model.score(paths)
        runs[name] = (result, model.decide(result), time.perf_counter() - t0)
    ref, ref_preds, ref_s = runs["torch"]
    print(f"\n{len(paths)} test images, median normal score {median:.2f}; torch score() {ref_s:.1f} s")
    print("| engine | score() s | max abs Δ score | max abs Δ map | same p-value | same decision | "
          "mask pixels differing |")
    print("|---|---|---|---|---|---|---|")
    for name, (result, preds, secs) in list(runs.items())[1:]:
        ds = float(np.abs(result.scores - ref.scores).max())
        dm = max(float(np.abs(a - b).max()) for a, b in zip(result.maps, ref.maps))
        same_p = sum(a.p_value == b.p_value for a, b in zip(preds, ref_preds))
        same_d = sum(a.is_anomaly == b.is_anomaly for a, b in zip(preds, ref_preds))
        masks = sum(int((a.mask != b.mask).sum()) for a, b in zip(preds, ref_preds))
        print(f"| {name} | {secs:.1f} | {ds:.1e} | {dm:.1e} | {same_p}/{len(paths)} | {same_d}/{len(paths)} | "
              f"{masks} |")


if __name__ == "__main__":
    main()
