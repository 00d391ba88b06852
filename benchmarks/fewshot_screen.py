"""Screen few-shot variants on cached backbone stages: image AUROC per k and seed, one thread.

Usage (the third-pass screen of docs/fewshot.md; a seeded test subsample, k = 1, seeds 0,1,2):
  python benchmarks/fewshot_screen.py ../shared/data/kolektorsdd --n-test 100 --shots 1 \
      --prior HEAD_TRAINED_WITHOUT_THIS_SET.safetensors --cache /tmp/fewshot_screen
Variants: `--aggregates` (patch aggregation sizes) × `--augments` ("flip", "dihedral" = flips + quarter turns on
square canvases, "+shift" adds reflect-shifted copies by half a stride-8 cell). Map rules per variant: "plain"
(nearest-neighbour distance, the detector's max − median score), "fuse" (per-image robust z of log distance + of
the prior head's logit, top-1 % or max rule; `--prior-weights` adds "fuseW/max" with the prior's z weighted W) and
"rz" (the robust z of log distance alone). The raw stages of the
test subsample and of every reference view are extracted once and cached (`--cache`), so variants cost only the
search.
`--backbone`, `--strides` and `--intensity` choose the features (defaults: the detector's); a stride-4 first
stage can be scored on its own grid (`--fine grid`) or average-pooled onto the stride-8 grid (`--fine pool`, the
same cost per search as without it). `--top 3,10` adds "plain/topN" rules: mean of the N highest scored cells
minus the median cell (the default rule is N = 1).

Fifth pass (docs/fewshot.md; both sets, k = 1 and 4, gain normalization):
  python benchmarks/fewshot_screen.py ../shared/data/magnetic_tile --n-test 100 --shots 1,4 \
      --backbone efficientnet_lite2 --top 3,10 --cache /tmp/fewshot_screen
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from normalcy import metrics
from normalcy.data import as_rgb_array, load_mvtec
from normalcy.detectors.image.common import masked_max
from normalcy.detectors.image.fewshot import FewShot, aggregate_stages, robust_z, sample_references, views
from normalcy.detectors.image.intensity import gain_normalize
from normalcy.detectors.image.search import greedy_coreset, nearest_neighbors
from normalcy.detectors.image.zeroshot import ZeroShot, head_inputs, load_head

SHIFTS = ((0, 4), (4, 0), (4, 4))  # pixels: half a stride-8 cell


def stages_of(fs: FewShot, item, augment: str = "none", shift: tuple[int, int] = (0, 0)):
    """Raw padded stages (half precision) and valid cells of one image's views."""
    a = as_rgb_array(item.path)
    if fs._gain():
        a = gain_normalize(a)
    x, _, valid = fs._canvas_batch([a], fs._canvas_shape(*a.shape[:2]), "none")
    if shift != (0, 0):
        x = F.pad(x, (shift[1], 0, shift[0], 0), mode="reflect")[..., : x.shape[-2], : x.shape[-1]]
    if augment != "none":
        x, valid = views(x, augment), views(valid, augment)
    return [s.half() for s in fs._features(x, raw=True)], valid


def build_cache(root: Path, n_test: int, shots: list[int], seeds: list[int], path: Path, fs: FewShot,
                shifts: bool = True) -> dict:
    """Stages of a seeded test subsample and of every reference's flip/rotation (and shifted) views."""
    if path.is_file():
        return torch.load(path, weights_only=True)  # tensors, lists, dicts and numbers only
    train, test = load_mvtec(root)
    rng = np.random.default_rng(0)
    idx = np.arange(len(test)) if n_test >= len(test) else np.sort(rng.choice(len(test), n_test, replace=False))
    out = {"labels": torch.tensor([int(test[i].label) for i in idx]), "cells": fs._pad_cells(),
           "test": [stages_of(fs, test[i]) for i in idx], "refs": {}, "samples": {}}
    for k in shots:
        for seed in seeds:
            refs = sample_references(train, k, seed)
            out["samples"][(k, seed)] = [str(r.path) for r in refs]
            for r in refs:
                if str(r.path) not in out["refs"]:
                    square = len(set(fs._canvas_shape(*as_rgb_array(r.path).shape[:2]))) == 1
                    views8 = stages_of(fs, r, "dihedral" if square else "flip")
                    shifted = [stages_of(fs, r, "flip", s) for s in SHIFTS] if shifts else []
                    out["refs"][str(r.path)] = {"views": views8, "shifts": shifted}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, path)
    return out


def pool_fine(stages: list[torch.Tensor], valid: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Average-pool the finest stage (stride 4) onto the next stage's grid (stride 8), valid cells too."""
    first = F.avg_pool2d(stages[0].float(), 2)
    return [first, *stages[1:]], F.avg_pool2d(valid.float()[:, None], 2)[:, 0] >= 0.5


def features(stages: list[torch.Tensor], valid: torch.Tensor, aggregate: int, cells: int, fine: str
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Patch features (B×C×h×w) and valid cells of cached stages; `fine="pool"` scores on the stride-8 grid."""
    stages = [s.float() for s in stages]
    if fine == "pool":
        stages, valid = pool_fine(stages, valid)
        cells //= 2
    return aggregate_stages(stages, aggregate, cells), valid


def top_mean(fs: FewShot, maps: torch.Tensor, valid: torch.Tensor, n: int) -> torch.Tensor:
    """Mean of the `n` highest scored cells (outside the border band) minus the median cell, per image."""
    cells = fs.score_cells(valid)
    flat = maps.masked_fill(~cells, float("-inf")).flatten(1)
    top = flat.topk(min(n, flat.shape[1]), dim=1).values
    top = torch.where(torch.isfinite(top), top, masked_max(maps, cells)[:, None]).mean(1)
    return top - maps.masked_fill(~valid, float("nan")).flatten(1).nanmedian(dim=1).values


def bank(cache: dict, k: int, seed: int, aggregate: int, augment: str, fine: str = "grid") -> torch.Tensor:
    """Reference patches of one (k, seed) for a variant, greedy-coreset to 16,384 rows like the detector."""
    parts = []
    for p in cache["samples"][(k, seed)]:
        ref = cache["refs"][p]
        st, v = ref["views"]
        n = v.shape[0] if augment.startswith("dihedral") else 4
        chosen = [([s[:n] for s in st], v[:n])] + (ref["shifts"] if augment.endswith("+shift") else [])
        for st, v in chosen:
            f, v = features(st, v, aggregate, cache["cells"], fine)
            parts.append(f.permute(0, 2, 3, 1)[v])
    x = torch.cat(parts)
    if x.shape[0] > 16384:
        x = x[greedy_coreset(x, 16384 / x.shape[0], seed=0)]
    return x.contiguous()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", help="an MVTec-layout category folder")
    ap.add_argument("--n-test", type=int, default=100, help="seeded test subsample (all when larger than the set)")
    ap.add_argument("--shots", default="1")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--aggregates", default="1")
    ap.add_argument("--augments", default="flip", help="comma separated: flip, dihedral, flip+shift, dihedral+shift")
    ap.add_argument("--prior", help="zero-shot head file for the fused rules (trained without this set)")
    ap.add_argument("--cache", default="fewshot_screen_cache")
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--strides", default="8,16", help="backbone stages, e.g. 4,8,16")
    ap.add_argument("--intensity", default="auto", help="auto (gain normalization, the default), gain or none")
    ap.add_argument("--fine", default="grid", help="with a stride-4 stage: grid (its own grid) or pool (onto stride 8)")
    ap.add_argument("--top", default="", help="extra plain/topN rules, e.g. 3,10")
    ap.add_argument("--prior-weights", default="", help="fused rules 'fuseW/max': rz + W · prior z, e.g. 0.25,0.5")
    args = ap.parse_args()
    torch.set_num_threads(1)
    root = Path(args.data)
    shots, seeds = [int(s) for s in args.shots.split(",")], [int(s) for s in args.seeds.split(",")]
    strides = tuple(int(s) for s in args.strides.split(","))
    fs = FewShot(progress=False, backbone=args.backbone, strides=strides,
                 intensity=None if args.intensity == "none" else args.intensity)
    shifts = "+shift" in args.augments
    tag = f"{root.name}-{args.n_test}-{args.backbone}-{'_'.join(map(str, strides))}-{args.intensity}"
    cache = build_cache(root, args.n_test, shots, seeds, Path(args.cache) / f"{tag}{'-shift' if shifts else ''}.pt",
                        fs, shifts)
    labels, cells = np.asarray(cache["labels"]), cache["cells"]
    zs = ZeroShot(progress=False)
    tops = [int(n) for n in args.top.split(",") if n]
    weights = [float(w) for w in args.prior_weights.split(",") if w]
    logits = None
    if args.prior:
        head, meta = load_head(args.prior)
        splits = zs.stage_splits()
        logits = [head.maps(head_inputs(aggregate_stages([s.float() for s in st], 3, cells), v, splits,
                                        meta.get("fractions"), meta.get("wide", 0)))[0] for st, v in cache["test"]]
        alone = [float(zs.image_scores(z[None], v)[0]) for z, (_, v) in zip(logits, cache["test"])]
        zs_auc = metrics.auroc(labels, alone)
        print(f"{root.name}: prior head alone (zero-shot image rule): {zs_auc:.4f}")
    for aggregate in (int(a) for a in args.aggregates.split(",")):
        test = [features(st, v, aggregate, cells, args.fine) for st, v in cache["test"]]
        for augment in args.augments.split(","):
            for k in shots:
                aucs: dict[str, list[float]] = {}
                for seed in seeds:
                    b = bank(cache, k, seed, aggregate, augment, args.fine)
                    sq = b.pow(2).sum(1)
                    scores: dict[str, list[float]] = {}
                    for i, (f, v) in enumerate(test):
                        d = nearest_neighbors(f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]), b, 1, 256, sq)[0]
                        d = d[:, 0].view(1, *f.shape[-2:])
                        rz = robust_z(d.clamp(min=1e-6).log(), v)
                        maps = {"plain/max": (d, fs), "rz/top": (rz, zs), "rz/max": (rz, fs), "plain/top1%": (d, zs)}
                        if logits is not None:
                            fused = rz + robust_z(logits[i][None], v)
                            maps.update({"fuse/top": (fused, zs), "fuse/max": (fused, fs)})
                            for w in weights:
                                maps[f"fuse{w:g}/max"] = (rz + w * robust_z(logits[i][None], v), fs)
                        for rule, (m, det) in maps.items():
                            scores.setdefault(rule, []).append(float(det.image_scores(m, v)[0]))
                        for n in tops:
                            scores.setdefault(f"plain/top{n}", []).append(float(top_mean(fs, d, v, n)[0]))
                    for rule, s in scores.items():
                        aucs.setdefault(rule, []).append(metrics.auroc(labels, s))
                for rule, a in aucs.items():
                    print(f"{root.name} n={len(labels)} {args.backbone} strides={args.strides} fine={args.fine} "
                          f"intensity={args.intensity} aggregate={aggregate} augment={augment} k={k} {rule}: "
                          f"{np.mean(a):.4f} ± {np.std(a):.4f} ({' / '.join(f'{x:.3f}' for x in a)})", flush=True)


if __name__ == "__main__":
    main()
