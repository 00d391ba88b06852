"""Semi-supervised PatchCore vs the normal-only model, per defect type, with k labelled anomalies per type.

python benchmarks/semisup.py ../shared/data/magnetic_tile [--ks 0,1,5] [--train 150] [--test-good 150] [--json f]

Affordable by design: the normal model (memory bank, 20% of the fit images held out for calibration) is fitted
once on a seeded subsample of train/good, and the features and nearest-neighbour distances of the test images are
computed once; each (type, k) then only retrains the head (`SemiSupervised.refit_head`: 24 synthetic anomalies
on the fit images — Perlin, cut-paste, and transplants of the labelled masks when k > 0 — plus the k labelled
images with their masks, SMOTE-oversampled) and rescores. For each type the k labelled images (also the only
transplant sources) are removed from that type's test images; the normal-only model is scored on the same images.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from normalcy import metrics
from normalcy.data import load_mvtec, read_mask
from normalcy.detectors.image.common import masked_max
from normalcy.detectors.image.patchcore import PatchCore
from normalcy.detectors.image.semisup import SemiSupervised
from normalcy.features.preprocess import restore_maps


def grid_scores(det: SemiSupervised, cached: list) -> list[torch.Tensor]:
    """NN-distance grid of every test image (computed once, reused by every head)."""
    dists = []
    for f, _, valid in det.iter_features(cached, "test distances"):
        dists.extend(PatchCore._score_features(det, f, valid)[1])
    return dists


def evaluate(det: SemiSupervised, use_head: bool, idx: list[int], labels: np.ndarray, masks: list,
             dists: list, cached: list) -> dict[str, float]:
    """Image and pixel AUROC on the test images `idx`: normal-only distances, or the combined score."""
    scores, maps = [], []
    for start in range(0, len(idx), 32):
        part = idx[start : start + 32]
        d = torch.stack([dists[i] for i in part])
        v = torch.stack([cached[i].valid for i in part])
        m = det.combine(d, torch.stack([cached[i].feats for i in part])) if use_head else d
        scores.append(masked_max(m, v).numpy())
        maps.extend(restore_maps(m, [cached[i].placement for i in part], int(det.image_size), float(det.sigma)))
    return {"image_auroc": metrics.auroc(labels[idx], np.concatenate(scores)),
            "pixel_auroc": metrics.pixel_auroc([masks[i] for i in idx], maps)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root")
    ap.add_argument("--ks", default="0,1,5")
    ap.add_argument("--train", type=int, default=150)
    ap.add_argument("--test-good", type=int, default=150)
    ap.add_argument("--per-type", type=int, default=0, help="cap on defect images per type (0 = all; smoke runs)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json")
    args = ap.parse_args()
    ks = [int(k) for k in args.ks.split(",")]
    t0 = time.perf_counter()
    train, test = load_mvtec(args.root)
    rng = np.random.default_rng(args.seed)
    train = [train[i] for i in sorted(rng.permutation(len(train))[: args.train])]
    goods = [s for s in test if s.label == 0]
    goods = [goods[i] for i in sorted(rng.permutation(len(goods))[: args.test_good])]
    bads = [s for s in test if s.label == 1]
    if args.per_type:
        bads = [s for t in sorted({b.defect_type for b in bads}) for s in [b for b in bads if b.defect_type == t][
            : args.per_type]]
    samples = goods + bads
    det = SemiSupervised(n_synthetic=0, alpha=0.1, seed=args.seed, progress=False)
    fit_items = det._cache_features(train)
    det.fit(fit_items)  # n_synthetic=0 and no labels: the plain PatchCore bank, no head
    cached = det._cache_features(samples)
    dists = grid_scores(det, cached)
    labels = np.array([s.label for s in samples])
    masks = [np.zeros((c.placement.height, c.placement.width), bool) if s.label == 0
             else read_mask(s.mask_path, (c.placement.height, c.placement.width)) for s, c in zip(samples, cached)]
    print(f"[semisup] features + distances of {len(train)} fit and {len(samples)} test images: "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    det.set_params(n_synthetic=24)
    rows = []
    types = sorted({s.defect_type for s in bads})
    for ti, dtype in enumerate(types):
        of_type = [i for i, s in enumerate(samples) if s.defect_type == dtype]
        for k in ks:
            pick = np.random.default_rng([args.seed, ti, k]).permutation(len(of_type))[:k]
            labelled = [of_type[i] for i in pick]
            idx = list(range(len(goods))) + [i for i in of_type if i not in labelled]
            t1 = time.perf_counter()
            det.refit_head(fit_items, anomalies=[samples[i].path for i in labelled],
                           masks=[masks[i] for i in labelled])
            semi = evaluate(det, True, idx, labels, masks, dists, cached)
            base = evaluate(det, False, idx, labels, masks, dists, cached)
            row = {"type": dtype, "k": k, "n_test_defects": len(idx) - len(goods), "n_test_good": len(goods),
                   "unsup_image_auroc": base["image_auroc"], "semisup_image_auroc": semi["image_auroc"],
                   "unsup_pixel_auroc": base["pixel_auroc"], "semisup_pixel_auroc": semi["pixel_auroc"],
                   "seconds": time.perf_counter() - t1}
            rows.append(row)
            print(" | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row.values()), flush=True)
    print("\n| type | k | test defects | image AUROC normal-only | image AUROC semisup | pixel AUROC normal-only "
          "| pixel AUROC semisup |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['type']} | {r['k']} | {r['n_test_defects']} | {r['unsup_image_auroc']:.3f} | "
              f"{r['semisup_image_auroc']:.3f} | {r['unsup_pixel_auroc']:.3f} | {r['semisup_pixel_auroc']:.3f} |")
    print(f"[semisup] total {time.perf_counter() - t0:.0f} s, torch threads {torch.get_num_threads()}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "args": vars(args)}, indent=2))


if __name__ == "__main__":
    main()
