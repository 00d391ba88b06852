"""Screen four few-shot levers on cached backbone stages: standardization, stride 4, 3×3 aggregation, position.

The sixth pass of docs/fewshot.md (issue 16). One cache of raw stages at strides 4,8,16
(benchmarks/fewshot_screen.build_cache) serves every variant; the stride-8,16 variants drop the stride-4 stage.
Prints image AUROC mean ± std over seeds per (variant, k) for the default rule (top-3 cells − median cell, "top3")
and the old max rule ("max"); position-local variants add "/pos" (distance to the nearest reference cell within
±window cells of the same place) and "/mix" (the mean of that and the global distance). One thread.

Usage (both sets; a seeded 100-image test subsample, k = 1 and 4, seeds 0,1,2):
  OMP_NUM_THREADS=1 python benchmarks/fewshot_levers.py ../shared/data/magnetic_tile \
      --variants base,std,s4pool,pos3,agg3
  OMP_NUM_THREADS=1 python benchmarks/fewshot_levers.py ../shared/data/kolektorsdd --variants s4grid --shots 1
Variants: base (strides 8,16), std (+ per-channel standardization fitted on the reference patches), s4pool /
s4grid (+ the stride-4 stage average-pooled onto stride 8 / on its own grid), agg3 (3×3 aggregation), posN
(+ position-local matching within ±N cells); "+std" combines a variant with standardization.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from fewshot_screen import build_cache, features, pool_fine, top_mean

from normalcy import metrics
from normalcy.detectors.image.fewshot import FewShot, aggregate_stages
from normalcy.detectors.image.reference import window_distances
from normalcy.detectors.image.search import greedy_coreset, nearest_neighbors
from normalcy.features.standardize import ChannelStats

# name: (fine stage: drop | pool | grid, aggregate, standardize, positional window or 0)
VARIANTS: dict[str, tuple[str, int, bool, int]] = {
    "base": ("drop", 1, False, 0),
    "std": ("drop", 1, True, 0),
    "s4pool": ("pool", 1, False, 0),
    "s4pool+std": ("pool", 1, True, 0),
    "s4grid": ("grid", 1, False, 0),
    "s4grid+std": ("grid", 1, True, 0),
    "agg3": ("drop", 3, False, 0),
    "agg3+std": ("drop", 3, True, 0),
    "pos3": ("drop", 1, False, 3),
    "pos3+std": ("drop", 1, True, 3),
    "pos6": ("drop", 1, False, 6),
    "pos1": ("drop", 1, False, 1),
}
BANK_ROWS = 16384  # the detector's coreset size
Refs = list[tuple[torch.Tensor, torch.Tensor]]


def default_cache() -> Path:
    """The stage cache folder under the user's cache directory (never inside the repository)."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "normalcy" / "fewshot_levers"


def variant_features(stages: list[torch.Tensor], valid: torch.Tensor, fine: str, aggregate: int, cells: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Patch features (B×C×h×w) and valid cells of cached 4,8,16 stages; "drop" leaves the stride-4 stage out."""
    if fine != "drop":
        return features(stages, valid, aggregate, cells, fine)
    pooled, valid = pool_fine(stages, valid)
    return aggregate_stages([s.float() for s in pooled[1:]], aggregate, cells // 2), valid


def ref_views(cache: dict, k: int, seed: int, fine: str, aggregate: int) -> Refs:
    """Per reference of one (k, seed): its 4 flip views' features (V×C×h×w) and valid cells."""
    out = []
    for p in cache["samples"][(k, seed)]:
        st, v = cache["refs"][p]["views"]
        out.append(variant_features([s[:4] for s in st], v[:4], fine, aggregate, cache["cells"]))
    return out


def window_min(q: torch.Tensor, refs: torch.Tensor, valid: torch.Tensor, window: int) -> torch.Tensor:
    """Distance of each query cell (q: C×h×w) to the nearest valid cell of any view (refs: V×C×h×w) within
    ±window cells: h×w (the reference detector's window search, min over the views)."""
    return window_distances(q[None], refs[None], valid[None], window)[0].min(0).values


def positional(q: torch.Tensor, refs: Refs, stats: ChannelStats | None, window: int) -> torch.Tensor:
    """Each query cell's distance to the nearest reference-view cell within ±window cells of the same position, the
    reference views resampled (nearest cell) to the query's grid; min over references and views. q: C×h×w → h×w."""
    best = None
    for f, v in refs:
        if stats is not None:
            f = stats.apply(f, dim=1)
        if f.shape[-2:] != q.shape[-2:]:
            f = F.interpolate(f, size=q.shape[-2:], mode="nearest")
            v = F.interpolate(v[:, None].float(), size=q.shape[-2:], mode="nearest")[:, 0] > 0.5
        d = window_min(q, f, v, window)
        best = d if best is None else torch.minimum(best, d)
    return best


def reference_bank(refs: Refs, std: bool) -> tuple[torch.Tensor, ChannelStats | None]:
    """Valid reference patches (standardized when asked, stats fitted on them), greedy-coreset like the detector."""
    patches = torch.cat([f.permute(0, 2, 3, 1)[v] for f, v in refs])
    stats = ChannelStats.fit(patches) if std else None
    if stats is not None:
        patches = stats.apply(patches)
    if patches.shape[0] > BANK_ROWS:
        patches = patches[greedy_coreset(patches, BANK_ROWS / patches.shape[0], seed=0)]
    return patches.contiguous(), stats


def run(cache: dict, fs: FewShot, variant: str, k: int, seed: int) -> dict[str, float]:
    """Image AUROC per score rule of one variant at one (k, seed) on the cached test subsample."""
    fine, aggregate, std, window = VARIANTS[variant]
    refs = ref_views(cache, k, seed, fine, aggregate)
    bank, stats = reference_bank(refs, std)
    sq = bank.pow(2).sum(1)
    fs_max = FewShot(progress=False, top_cells=1)  # the old max rule
    scores: dict[str, list[float]] = {}
    for st, v in cache["test"]:
        f, v = variant_features(st, v, fine, aggregate, cache["cells"])
        if stats is not None:
            f = stats.apply(f, dim=1)
        d = nearest_neighbors(f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]), bank, 1, 256, sq)[0]
        maps = {"": d[:, 0].view(1, *f.shape[-2:])}
        if window:
            p = positional(f[0], refs, stats, window)[None]
            maps = {"/pos": p, "/mix": 0.5 * (maps[""] + p)}
        for tag, m in maps.items():
            scores.setdefault(f"top3{tag}", []).append(float(top_mean(fs, m, v, 3)[0]))
            scores.setdefault(f"max{tag}", []).append(float(fs_max.image_scores(m, v)[0]))
    labels = np.asarray(cache["labels"])
    return {rule: metrics.auroc(labels, s) for rule, s in scores.items()}


def screen(cache: dict, name: str, variant: str, shots: list[int], seeds: list[int]) -> list[dict]:
    """Run one variant over every k and seed, printing and returning one row per (k, rule)."""
    fs = FewShot(progress=False)  # rules: border band / median / max, as the detector
    rows = []
    for k in shots:
        per: dict[str, list[float]] = {}
        t0 = time.time()
        for seed in seeds:
            for rule, a in run(cache, fs, variant, k, seed).items():
                per.setdefault(rule, []).append(a)
        for rule, a in per.items():
            rows.append({"set": name, "variant": variant, "k": k, "rule": rule, "aucs": a})
            print(f"{name} n={len(cache['labels'])} {variant} k={k} {rule}: {np.mean(a):.4f} ± {np.std(a):.4f} "
                  f"({' / '.join(f'{x:.3f}' for x in a)})  [{time.time() - t0:.0f}s]", flush=True)
    return rows


def ints(text: str) -> list[int]:
    """Comma-separated integers."""
    return [int(s) for s in text.split(",")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", help="an MVTec-layout category folder")
    ap.add_argument("--variants", default="base,std,s4pool", help=f"comma separated, of: {', '.join(VARIANTS)}")
    ap.add_argument("--shots", default="1,4")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--n-test", type=int, default=100, help="seeded test subsample (all when larger than the set)")
    ap.add_argument("--cache", type=Path, default=default_cache(), help="folder for the cached stages")
    ap.add_argument("--out", type=Path, help="also write the per-seed rows as JSON")
    args = ap.parse_args()
    unknown = set(args.variants.split(",")) - set(VARIANTS)
    if unknown:
        ap.error(f"unknown variants: {', '.join(sorted(unknown))}")
    torch.set_num_threads(1)
    root = Path(args.data)
    shots, seeds = ints(args.shots), ints(args.seeds)
    tag = f"{root.name}-{args.n_test}-lite0-4_8_16-auto-k{'_'.join(map(str, shots))}-s{'_'.join(map(str, seeds))}"
    cache = build_cache(root, args.n_test, shots, seeds, args.cache.expanduser() / f"{tag}.pt",
                        FewShot(progress=False, strides=(4, 8, 16)), shifts=False)
    rows = [r for variant in args.variants.split(",") for r in screen(cache, root.name, variant, shots, seeds)]
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
