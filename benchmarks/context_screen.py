"""Screen of context terms and fusion rules for PatchCore's maps on cached backbone stages (issue 15, fifth pass).

Usage:
  python benchmarks/context_screen.py ../shared/data/magnetic_tile ../shared/data/kolektorsdd --cache DIR \
      [--variants sum,s32-gauss:sum,s32pool-nn:sum@map,...] [--train 100 --test 150 | --full] [--seed 0] \
      [--detector-seed 0] [--threads 1] [--out screen.md]
Lite0's stride-8/16/32 stages of each set's (seeded) train/test subsample are extracted once, gain-normalized on the
fitted aspect canvas, into DIR/<set>-<train>-<test>-s<seed>.pt (DIR must be outside the repository), and reused.
The two default terms come from the real `PatchCore`, fitted on patch features rebuilt from those stages; an extra
context term is fitted on the same fit images (`split_holdout`) and z-scored on the same held-out images.
A variant is `FUSION` (the default's two terms) or `CTX[+CTX...]:FUSION`, CTX = `KIND-MODEL` with KIND in
CONTEXT_KINDS and MODEL `nn` or `gaussN` (N random channels, 100 when omitted); `onlyCTX:...` uses that term alone.
FUSION is one of FUSIONS, `nnonly`, `posonly` or `ctxonly`; a trailing `@map` keeps the `sum` variant's image score
(so `sum` must be among the variants). `s32in` puts the stride-32 stage inside the patch features instead.
Rows: image AUROC / pixel AUROC / AUPRO per set and their mean; "px" is the per-type pixel AUROC (each type against
the good images) of --px-types where a set has them. Tables in docs/design.md, "Fifth pass (issue 15): a context term
for large textured areas".
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import astuple
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from normalcy import metrics
from normalcy.apps.bench.images import masks_for
from normalcy.data import as_rgb_array, load_mvtec
from normalcy.detectors.image.common import CachedFeatures, masked_max
from normalcy.detectors.image.intensity import GainNormalized
from normalcy.detectors.image.padim import fit_position_gaussian, position_distances, random_channels
from normalcy.detectors.image.patchcore import PatchCore, mean_spread, split_holdout
from normalcy.detectors.image.search import greedy_coreset, nearest_neighbors
from normalcy.detectors.image.zeroshot import local_mean
from normalcy.features.preprocess import Placement, prepare_batch, restore_maps, valid_grid
from normalcy.features.standardize import ChannelStats

sys.path.insert(0, str(Path(__file__).parent))
from ablate_image import subsample  # noqa: E402

STAGES = (8, 16, 32)
BATCH = 32
REPO = Path(__file__).resolve().parents[1]
METRICS = ("image_auroc", "pixel_auroc", "aupro")
Stages = list[torch.Tensor]
Fusion = Callable[[list[torch.Tensor], torch.Tensor], torch.Tensor]
TermBatch = tuple[list[int], torch.Tensor, torch.Tensor, dict[str, torch.Tensor], torch.Tensor]


# ---- stage cache ----------------------------------------------------------------------------------------------
def aggregate(f: torch.Tensor, k: int = 3) -> torch.Tensor:
    """k×k average with replicate padding: the extractor's local aggregation, on one stage."""
    return f if k == 1 else local_mean(f, k)


def patch_features(stages: Stages, k: int = 3) -> torch.Tensor:
    """Stages (finest first) → aggregated, upsampled to the finest grid, concatenated: PatchCore's patch features."""
    target = stages[0].shape[-2:]
    parts = [aggregate(f.float(), k) for f in stages]
    parts = [f if f.shape[-2:] == target else F.interpolate(f, size=target, mode="bilinear", align_corners=False)
             for f in parts]
    return torch.cat(parts, 1).contiguous()


def extract_stages(det: PatchCore, items: list) -> dict[str, Any]:
    """Raw stages, placements and valid grids of every item, batch by batch as PatchCore's feature loop makes them."""
    gained = GainNormalized(items)
    stages: list[Stages] = []
    pls: list = []
    valid = []
    for start in range(0, len(items), BATCH):
        x, pl = prepare_batch([as_rgb_array(a) for a in gained[start:start + BATCH]], det.canvas, det.input_mode)
        with torch.inference_mode():
            st = det.extractor.net.forward_features(x, STAGES)
            if start == 0:  # the rebuilt patch features must be the extractor's own
                diff = float((patch_features(st[:2]) - det.extractor(x)).abs().max())
                print(f"[context] max abs diff vs extractor {diff:.2e}", flush=True)
        stages.append(st)
        pls.extend(pl)
        valid.append(valid_grid(pl, det.canvas, tuple(st[0].shape[-2:])))
    out = {f"s{s}": torch.cat([st[i] for st in stages]) for i, s in enumerate(STAGES)}
    return {**out, "pl": pls, "valid": torch.cat(valid)}


def cached_stages(root: str, train: list, test: list, path: Path) -> dict[str, Any]:
    """The stage cache of this subsample: loaded when present, else extracted and saved."""
    if path.exists():  # tensors, tuples and numbers only: placements are stored as plain tuples
        data = torch.load(path, weights_only=True)
        for part in ("train", "test"):
            data[part]["pl"] = [Placement(*p) for p in data[part]["pl"]]
        return data
    det = PatchCore(progress=False, calibration_fraction=0.0)
    det._fit_canvas(train)
    t0 = time.perf_counter()
    data = {"canvas": det.canvas, "train": extract_stages(det, train), "test": extract_stages(det, test)}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({**data, **{k: {**data[k], "pl": [astuple(p) for p in data[k]["pl"]]} for k in ("train", "test")}},
               path)
    print(f"[context] {root} canvas {det.canvas} cached in {time.perf_counter() - t0:.0f}s → {path}", flush=True)
    return data


def batches(part: dict[str, Any], idx: list[int] | None = None) -> Iterator[tuple[list[int], Stages, torch.Tensor]]:
    """(indices, float stages, valid grids) of the cached items `idx` (all when None), BATCH at a time."""
    ids = list(range(len(part["pl"]))) if idx is None else list(idx)
    for a in range(0, len(ids), BATCH):
        sel = ids[a:a + BATCH]
        yield sel, [part[f"s{s}"][sel].float() for s in STAGES], part["valid"][sel]


# ---- context terms ----------------------------------------------------------------------------------------------
def local_std(x: torch.Tensor, k: int) -> torch.Tensor:
    """Per-channel standard deviation over a k×k window: a texture-energy descriptor."""
    m = aggregate(x, k)
    return (aggregate(x * x, k) - m * m).clamp(min=0).sqrt()


def upsampled_s32(st: Stages) -> torch.Tensor:
    """What the patch features would carry of stride 32: 3×3-averaged, upsampled to the stride-8 grid."""
    return F.interpolate(aggregate(st[2], 3), size=st[0].shape[-2:], mode="bilinear", align_corners=False)


CONTEXT_KINDS: dict[str, Callable[[Stages, torch.Tensor], torch.Tensor]] = {
    "s32": lambda st, main: aggregate(st[2], 3),
    "s32up": lambda st, main: upsampled_s32(st),
    "s32pool": lambda st, main: F.avg_pool2d(upsampled_s32(st), 4),  # = `context=True`'s cells
    "s32raw": lambda st, main: st[2],
    "s16w": lambda st, main: aggregate(st[1], 5),
    "wide7": lambda st, main: aggregate(main, 7),
    "var7": lambda st, main: local_std(main, 7),
    "var7s8": lambda st, main: local_std(st[0], 7),
    "mv7": lambda st, main: torch.cat([aggregate(main, 7), local_std(main, 7)], 1),
}


def flat_cells(f: torch.Tensor) -> torch.Tensor:
    """B×C×h×w → (B·h·w)×C."""
    return f.permute(0, 2, 3, 1).reshape(-1, f.shape[1])


class Context:
    """A context term: standardized context features, then a per-position Gaussian or a NN bank; maps on the s8 grid."""

    def __init__(self, name: str, seed: int) -> None:
        self.kind, self.model = name.split("-")
        self.seed = seed
        if self.kind not in CONTEXT_KINDS or not (self.model == "nn" or self.model.startswith("gauss")):
            raise SystemExit(f"unknown context term {name}; KIND-nn or KIND-gaussN with KIND in {list(CONTEXT_KINDS)}")

    def features(self, det: PatchCore, st: Stages) -> torch.Tensor:
        """The raw context features of one batch (the det's standardized patch features feed the wide kinds)."""
        return CONTEXT_KINDS[self.kind](st, det._standardized(patch_features(st[:2])))

    def fit(self, det: PatchCore, part: dict[str, Any], fit_idx: list[int]) -> Context:
        """Channel statistics, then the Gaussian or the bank (greedy coreset of 10 % above 20k cells)."""
        feats = [self.features(det, st) for _, st, _ in batches(part, fit_idx)]
        self.stats = ChannelStats.fit(torch.cat([flat_cells(f) for f in feats]))
        feats = [self.stats.apply(f, dim=1) for f in feats]
        if self.model.startswith("gauss"):
            chans = random_channels(feats[0].shape[1], int(self.model[5:] or 100), self.seed)
            self.pos = (chans, *fit_position_gaussian(iter(feats), chans, 0.01))
            return self
        bank = torch.cat([flat_cells(f) for f in feats])
        if bank.shape[0] > 20000:
            bank = bank[greedy_coreset(bank, 0.1, 64, seed=self.seed)].contiguous()
        self.bank, self.bank_sq = bank, (bank * bank).sum(1)
        return self

    def maps(self, det: PatchCore, st: Stages, target: tuple[int, int]) -> torch.Tensor:
        """B×h×w raw distances of the term, resized to the map grid."""
        f = self.stats.apply(self.features(det, st), dim=1)
        if self.model.startswith("gauss"):
            d = position_distances(f, *self.pos)
        else:
            b, c, h, w = f.shape
            dist, _ = nearest_neighbors(flat_cells(f), self.bank, 1, 256, self.bank_sq)
            d = dist[:, 0].view(b, h, w)
        if d.shape[-2:] != target:
            d = F.interpolate(d[:, None], size=target, mode="bilinear", align_corners=False)[:, 0]
        return d


# ---- fusion ------------------------------------------------------------------------------------------------------
FUSIONS: dict[str, Fusion] = {
    "sum": lambda zs, zb: sum(zs),
    "max": lambda zs, zb: torch.stack(zs).amax(0),
    "lse": lambda zs, zb: torch.logsumexp(torch.stack(zs), 0),
    "b+relu": lambda zs, zb: zs[0] + zs[1] + sum(z.clamp(min=0) for z in zs[2:]),
    "b+relu2": lambda zs, zb: zs[0] + zs[1] + sum((z - 2).clamp(min=0) for z in zs[2:]),
    "maxb": lambda zs, zb: torch.stack([zb, *zs[2:]]).amax(0),
    "b+half": lambda zs, zb: zs[0] + zs[1] + 0.5 * sum(zs[2:]),
}
SINGLE_TERMS = ("nnonly", "posonly", "ctxonly")


def parse_variant(var: str) -> tuple[str, str]:
    """'CTX:FUSION[@map]' or 'FUSION' → (context part or 'base', fusion without '@map')."""
    ctx, fusion = var.split(":") if ":" in var else ("base", var)
    return ctx, fusion.removesuffix("@map")


def context_names(variants: list[str]) -> list[str]:
    """The context terms the variants need."""
    names = {c.removeprefix("only") for v in variants if ":" in v for c in parse_variant(v)[0].split("+")}
    return sorted(names)


def check_variants(variants: list[str]) -> None:
    """Fail early on an unknown fusion, or on '@map' without the 'sum' variant it borrows image scores from."""
    for var in variants:
        fusion = parse_variant(var)[1]
        if var != "s32in" and fusion not in FUSIONS and fusion not in SINGLE_TERMS:
            raise SystemExit(f"unknown fusion in {var}; choose from {', '.join([*FUSIONS, *SINGLE_TERMS])}")
    if any(v.endswith("@map") for v in variants) and "sum" not in variants:
        raise SystemExit("'@map' variants take the image score of the 'sum' variant: add 'sum' to --variants")


def fused_map(var: str, znn: torch.Tensor, zpos: torch.Tensor, zc: dict[str, torch.Tensor],
              zb: torch.Tensor) -> torch.Tensor:
    """One variant's map from the z-scored terms (zb: the z-scored default sum)."""
    ctx, fusion = parse_variant(var)
    single = {"nnonly": lambda: znn, "posonly": lambda: zpos, "ctxonly": lambda: zc[ctx]}
    if fusion in single:
        return single[fusion]()
    if ctx == "base":
        zs = [znn, zpos]
    elif ctx.startswith("only"):
        zs = [zc[ctx[4:]]]
    else:
        zs = [znn, zpos, *(zc[c] for c in ctx.split("+"))]
    return FUSIONS[fusion](zs, zb)


def zstats(values: list[torch.Tensor]) -> tuple[float, float]:
    """Mean and standard deviation of the pooled values (PatchCore's normalizer)."""
    mu, sd = mean_spread(values).tolist()
    return mu, sd


# ---- one set -------------------------------------------------------------------------------------------------------
def fit_default(part: dict[str, Any], items: list, seed: int, strides: tuple[int, ...] = (8, 16)) -> PatchCore:
    """The real PatchCore (no calibration split) fitted on patch features rebuilt from the cached stages."""
    det = PatchCore(progress=False, calibration_fraction=0.0, seed=seed, strides=strides)
    cached = []
    for sel, st, v in batches(part):
        f = patch_features(st[:len(strides)])
        cached += [CachedFeatures(f[j], part["pl"][i], v[j], False, items[i]) for j, i in enumerate(sel)]
    return det.fit(cached)


def term_batches(det: PatchCore, ctxs: dict[str, Context], part: dict[str, Any],
                 idx: list[int] | None = None) -> Iterator[TermBatch]:
    """Per batch: indices, z-scored NN and position terms (the det's normalizers), raw context maps, valid grids."""
    mu_nn, sd_nn, mu_pos, sd_pos = (float(v) for v in det._fusion)
    for sel, st, v in batches(part, idx):
        nn, _, searched = det._nn_maps(patch_features(st[:2]))
        pos = position_distances(searched, *det._position)
        raw = {n: c.maps(det, st, tuple(nn.shape[-2:])) for n, c in ctxs.items()}
        yield sel, (nn - mu_nn) / sd_nn, (pos - mu_pos) / sd_pos, raw, v


def held_norms(det: PatchCore, ctxs: dict[str, Context], part: dict[str, Any],
               held: list[int]) -> tuple[dict[str, tuple[float, float]], tuple[float, float]]:
    """Normalizers of each context term and of the default sum on the held-out fit images' valid cells."""
    vals: dict[str, list[torch.Tensor]] = {n: [] for n in ctxs}
    base = []
    for _, znn, zpos, raw, v in term_batches(det, ctxs, part, held):
        base.append((znn + zpos)[v])
        for n in ctxs:
            vals[n].append(raw[n][v])
    return {n: zstats(x) for n, x in vals.items()}, zstats(base)


def test_maps(det: PatchCore, ctxs: dict[str, Context], part: dict[str, Any], variants: list[str],
              norms: dict[str, tuple[float, float]], base: tuple[float, float]) -> dict[str, torch.Tensor]:
    """Grid-level test maps of every variant (but s32in)."""
    out: dict[str, list[torch.Tensor]] = {v: [] for v in variants if v != "s32in"}
    for _, znn, zpos, raw, _ in term_batches(det, ctxs, part):
        zb = (znn + zpos - base[0]) / base[1]
        zc = {n: (raw[n] - norms[n][0]) / norms[n][1] for n in ctxs}
        for var in out:
            out[var].append(fused_map(var, znn, zpos, zc, zb))
    return {v: torch.cat(m) for v, m in out.items()}


def s32in_maps(tr: dict[str, Any], te: dict[str, Any], items: list, seed: int) -> torch.Tensor:
    """Test maps of the default with the stride-32 stage inside the patch features (strides 8, 16, 32)."""
    det = fit_default(tr, items, seed, STAGES)
    return torch.cat([det._fused_maps(patch_features(st), v)[0] for _, st, v in batches(te)])


def evaluate(det: PatchCore, maps: dict[str, torch.Tensor], te: dict[str, Any], test: list, canvas: tuple[int, int],
             px_types: list[str]) -> dict[str, dict[str, float]]:
    """Image AUROC (masked max of the map; '@map': of the 'sum' map), pixel metrics, per-type pixel AUROC."""
    labels = np.array([s.label for s in test])
    valid = det.score_cells(te["valid"])
    types = {t: [i for i, s in enumerate(test) if s.defect_type in (t, "good")] for t in px_types
             if any(s.defect_type == t for s in test)}
    masks = None
    res = {}
    for var, m in maps.items():
        scores = masked_max(maps["sum"] if var.endswith("@map") else m, valid).double().numpy()
        full = [r for a in range(0, len(test), BATCH)
                for r in restore_maps(m[a:a + BATCH], te["pl"][a:a + BATCH], canvas, float(det.sigma))]
        masks = masks_for(test, full) if masks is None else masks
        row = {"image_auroc": metrics.auroc(labels, scores), **metrics.pixel_metrics(masks, full)}
        row.update({f"px_{t}": metrics.pixel_auroc([masks[i] for i in ids], [full[i] for i in ids])
                    for t, ids in types.items()})
        res[var] = row
    return res


def run_set(root: str, variants: list[str], n_train: int | None, n_test: int | None, seed: int, det_seed: int,
            cache_dir: Path, px_types: list[str]) -> dict[str, dict[str, float]]:
    """Every variant on one set: {variant: {metric: value}}."""
    train, test = load_mvtec(root)
    train, test = subsample(train, n_train, seed), subsample(test, n_test, seed + 1)
    tag = f"{Path(root).name}-{n_train or 'all'}-{n_test or 'all'}-s{seed}.pt"
    data = cached_stages(root, train, test, cache_dir / tag)
    tr, te = data["train"], data["test"]
    t0 = time.perf_counter()
    det = fit_default(tr, train, det_seed)
    fit_idx, held_idx = split_holdout(list(range(len(train))), det.holdout, det.seed)
    ctxs = {n: Context(n, det_seed).fit(det, tr, fit_idx) for n in context_names(variants)}
    norms, base = held_norms(det, ctxs, tr, held_idx)
    print(f"[context] {Path(root).name}: fit {time.perf_counter() - t0:.0f}s, norms {norms}, base {base}", flush=True)
    maps = test_maps(det, ctxs, te, variants, norms, base)
    if "s32in" in variants:
        maps["s32in"] = s32in_maps(tr, te, train, det_seed)
    res = evaluate(det, {v: maps[v] for v in variants}, te, test, tuple(data["canvas"]), px_types)
    for var, row in res.items():
        print(f"[context] {Path(root).name:16s} {var:22s} " + " ".join(f"{k}={v:.3f}" for k, v in row.items()),
              flush=True)
    return res


def table(results: dict[str, dict[str, dict[str, float]]], variants: list[str], px_types: list[str]) -> str:
    """Markdown: image / pixel / AUPRO per set, their mean over sets, and the per-type pixel AUROC."""
    sets = list(results)
    lines = ["| variant | " + " | ".join(sets) + " | mean | px " + " / ".join(px_types) + " |",
             "|---" * (len(sets) + 3) + "|"]
    for var in variants:
        cells = [" / ".join(f"{results[s][var][m]:.3f}" for m in METRICS) for s in sets]
        mean = " / ".join(f"{np.mean([results[s][var][m] for s in sets]):.3f}" for m in METRICS)
        px = "; ".join(" / ".join(f"{results[s][var][f'px_{t}']:.3f}" for t in px_types) for s in sets
                       if all(f"px_{t}" in results[s][var] for t in px_types))
        lines.append(f"| {var} | " + " | ".join(cells) + f" | {mean} | {px} |")
    return "\n".join(lines)


def cache_dir(arg: str) -> Path:
    """The stage-cache folder, refused inside the repository (the caches are large)."""
    path = Path(arg).resolve()
    if path == REPO or REPO in path.parents:
        raise SystemExit(f"--cache {arg} is inside the repository; put the stage caches elsewhere")
    return path


def report(text: str, results: dict, out: str | None) -> None:
    """Print the table; with --out also write it (markdown) and the raw figures (<out>.json)."""
    print(text)
    if out:
        Path(out).write_text(text + "\n")
        Path(out).with_suffix(".json").write_text(json.dumps(results, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("roots", nargs="+", help="MVTec-layout category folders")
    ap.add_argument("--cache", required=True, help="folder for the per-set stage caches (outside the repository)")
    ap.add_argument("--variants", default="sum,s32-gauss:sum,s32-nn:sum,s32pool-nn:sum@map",
                    help="comma-separated: FUSION, CTX[+CTX]:FUSION[@map] or s32in (see above)")
    ap.add_argument("--train", type=int, default=100, help="train images per set (screening subsample)")
    ap.add_argument("--test", type=int, default=150, help="test images per set (screening subsample)")
    ap.add_argument("--full", action="store_true", help="use every train and test image")
    ap.add_argument("--seed", type=int, default=0, help="subsample seed (test: seed + 1)")
    ap.add_argument("--detector-seed", type=int, default=0, help="hold-out split, coreset start, channels")
    ap.add_argument("--px-types", default="crack,uneven", help="defect types for the per-type pixel AUROC")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", help="also write the table (markdown) and the raw figures (<out>.json)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    check_variants(variants)
    px_types = [t for t in args.px_types.split(",") if t]
    n_train, n_test = (None, None) if args.full else (args.train, args.test)
    folder = cache_dir(args.cache)
    results = {Path(r).name: run_set(r, variants, n_train, n_test, args.seed, args.detector_seed, folder, px_types)
               for r in args.roots}
    report(table(results, variants, px_types), results, args.out)


if __name__ == "__main__":
    main()
