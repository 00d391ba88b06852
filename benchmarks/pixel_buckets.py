"""Which normal pixels outrank the defect pixels in the pooled pixel AUROC of one MVTec-layout set (diagnosis).

Usage:
  OMP_NUM_THREADS=1 python benchmarks/pixel_buckets.py ../shared/data/magnetic_tile --threads 1 \
      [--param context=true] [--type uneven] [--json OUT]
Fits `PatchCore(calibration_fraction=0)` (defaults, plus any `--param key=value`) on every train image, scores every
test image (`score`: maps at each image's own size) and buckets the normal pixels: all pixels of the good images, and
those of the defective images at 0–8, 8–32 and >32 px (Euclidean, `scipy.ndimage.distance_transform_edt`) from the
nearest defect pixel of their own image. A defective image whose mask is empty counts as infinitely far (>32 px).
Per bucket: its share of the normal pixels, the AUROC of all defect pixels against it, its share of the pooled
computation's misranked (defect below normal) pairs, and the AUROC of one defect type's pixels against it. Then the
within-image AUROC per defect type (each image's defect vs normal pixels, pairs pooled over the type's images; empty
masks skipped). Every AUROC is `normalcy.metrics.pixel_auroc`: exact (ties half), all pixels, no binning or sampling.
Test labels are used only to report. Docs: docs/design.md, "Which normal pixels outrank the defects".
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from normalcy import PatchCore, metrics
from normalcy.apps.bench.images import masks_for
from normalcy.apps.cli.common import parse_param
from normalcy.data import load_mvtec

BANDS = ((0.0, 8.0, "0–8 px"), (8.0, 32.0, "8–32 px"), (32.0, np.inf, ">32 px"))


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Exact AUROC of pos over neg scores via the package metric (each passed as one 1×n image)."""
    masks = [np.ones((1, pos.size), bool), np.zeros((1, neg.size), bool)]
    return metrics.pixel_auroc(masks, [pos.reshape(1, -1), neg.reshape(1, -1)])


def fit_and_score(root: str, params: dict) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """Default PatchCore fitted on every train image: test maps, masks at the maps' size, defect types."""
    train, test = load_mvtec(root)
    det = PatchCore(**{"calibration_fraction": 0.0, "progress": False, **params}).fit(train)
    maps = det.score(test).maps
    masks = masks_for(test, maps)
    if masks is None:
        raise SystemExit(f"{root}: no ground-truth masks, nothing to bucket")
    return maps, masks, [s.defect_type if s.label else "good" for s in test]


def split(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray],
          types: Sequence[str]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Defect scores per type, and normal scores per bucket (good images, then each distance band)."""
    pos: dict[str, list] = {}
    neg: dict[str, list] = {"good images": []}
    for amap, mask, kind in zip(maps, masks, types):
        if kind == "good":
            neg["good images"].append(amap.ravel())
            continue
        pos.setdefault(kind, []).append(amap[mask])
        dist = ndimage.distance_transform_edt(~mask) if mask.any() else np.full(mask.shape, np.inf)
        for lo, hi, name in BANDS:
            neg.setdefault(f"defective images, {name}", []).append(amap[~mask & (dist > lo) & (dist <= hi)])
    return ({k: np.concatenate(v) for k, v in pos.items()}, {k: np.concatenate(v) for k, v in neg.items()})


def bucket_rows(pos: dict[str, np.ndarray], neg: dict[str, np.ndarray], kind: str | None) -> list[dict]:
    """One row per bucket plus the pooled row: share of normals, AUROCs, share of misranked pairs."""
    all_pos, all_neg = np.concatenate(list(pos.values())), np.concatenate(list(neg.values()))
    pooled = auc(all_pos, all_neg)
    lost = all_neg.size * (1.0 - pooled)  # misranked pairs / number of defect pixels
    rows = []
    for name, n in [*neg.items(), ("all (pooled)", all_neg)]:
        a = pooled if n is all_neg else auc(all_pos, n)
        rows.append({"bucket": name, "share_of_normals": n.size / all_neg.size, "auroc_all_defects": a,
                     "share_of_misranked_pairs": n.size * (1.0 - a) / lost,
                     "auroc_type": auc(pos[kind], n) if kind else float("nan")})
    return rows


def within_image(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray], types: Sequence[str]) -> dict[str, float]:
    """Per defect type: each image's defect-vs-normal AUROC, weighted by its pair count (= pairs pooled per type)."""
    won: dict[str, float] = {}
    pairs: dict[str, float] = {}
    for amap, mask, kind in zip(maps, masks, types):
        n = float(mask.sum()) * float((~mask).sum())
        if kind == "good" or n == 0:
            continue
        won[kind] = won.get(kind, 0.0) + metrics.pixel_auroc([mask], [amap]) * n
        pairs[kind] = pairs.get(kind, 0.0) + n
    return {k: won[k] / pairs[k] for k in sorted(won)}


def per_type(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray], types: Sequence[str],
             pos: dict[str, np.ndarray], neg: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Per defect type: all defects vs the far (>32 px) pixels of that type's images, its share of the misranked
    pairs, its median mask cover and how many of its images have an empty mask."""
    all_pos, all_neg = np.concatenate(list(pos.values())), np.concatenate(list(neg.values()))
    lost = all_pos.size * all_neg.size * (1.0 - auc(all_pos, all_neg))
    out = {}
    for kind in sorted(pos):
        mine = [(m, k) for m, k, t in zip(maps, masks, types) if t == kind]
        far = np.concatenate([a[~k & (ndimage.distance_transform_edt(~k) > BANDS[-1][0])] if k.any() else a.ravel()
                              for a, k in mine])
        out[kind] = {"auroc_all_defects_vs_far": auc(all_pos, far),
                     "share_of_misranked_pairs": pos[kind].size * all_neg.size * (1.0 - auc(pos[kind], all_neg)) / lost,
                     "median_cover": float(np.median([k.mean() for _, k in mine])),
                     "empty_masks": sum(not k.any() for _, k in mine)}
    return out


def centered_auroc(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> float:
    """Pooled pixel AUROC after subtracting each image's median map value (a diagnosis of whole-image offsets)."""
    return metrics.pixel_auroc(list(masks), [a - np.median(a) for a in maps])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", help="an MVTec-layout category folder")
    ap.add_argument("--param", action="append", type=parse_param, default=[], metavar="KEY=VALUE",
                    help="PatchCore parameter (repeatable), e.g. context=true")
    ap.add_argument("--type", default="uneven", help="defect type for the last column (skipped when absent)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    maps, masks, types = fit_and_score(args.root, dict(args.param))
    pos, neg = split(maps, masks, types)
    kind = args.type if args.type in pos else None
    rows = bucket_rows(pos, neg, kind)
    within = within_image(maps, masks, types)
    n_pos, n_neg = sum(p.size for p in pos.values()), sum(n.size for n in neg.values())
    print(f"{Path(args.root).name}: pooled pixel AUROC {rows[-1]['auroc_all_defects']:.4f} "
          f"({n_pos} defect px, {n_neg} normal px; params {dict(args.param)})")
    print(f"| normal pixels | share of normals | AUROC, all defect px vs bucket | share of misranked pairs | "
          f"{kind or '-'} defect px vs bucket |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['bucket']} | {r['share_of_normals']:.3f} | {r['auroc_all_defects']:.3f} | "
              f"{r['share_of_misranked_pairs']:.3f} | {r['auroc_type']:.3f} |")
    print("within-image AUROC (pairs pooled per type): " + ", ".join(f"{k} {v:.3f}" for k, v in within.items()))
    types_table = per_type(maps, masks, types, pos, neg)
    print("| defect type | all defects vs its images' far pixels | share of misranked pairs | median mask cover | "
          "empty masks |\n|---|---|---|---|---|")
    for k, r in types_table.items():
        print(f"| {k} | {r['auroc_all_defects_vs_far']:.3f} | {r['share_of_misranked_pairs']:.3f} | "
              f"{r['median_cover']:.3f} | {r['empty_masks']} |")
    centered = centered_auroc(maps, masks)
    print(f"pooled pixel AUROC with each image's median map value subtracted: {centered:.4f}")
    if args.json:
        out = {"root": args.root, "params": dict(args.param), "type": kind, "defect_px": n_pos, "normal_px": n_neg,
               "buckets": rows, "within_image_auroc": within, "per_type": types_table, "centered_auroc": centered}
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
