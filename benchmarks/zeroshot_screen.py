"""Screen zero-shot head variants on the cached head inputs of `train_zeroshot_head.py` (docs/fewshot.md, zero-shot
sixth pass): wider cell statistics, extra in-image distances, head capacity and large low-contrast synthesized
anomalies. No backbone runs except for the `region` variant's anomalies (cached under `--cache` too).

    python benchmarks/zeroshot_screen.py --data ../shared/data --cache ~/.cache/normalcy/zeroshot \
        --variants base,wide11,d05,pool,both --plans val_k_t,val_k_f,ksdd2mt
    python benchmarks/zeroshot_screen.py --data ../shared/data --variants h16,h64,e40,wd1e-2,region \
        --plans val_k_t,val_m_t,ksdd2mt

Plans: a head trained on some sets (demo `tiles` / `fabric` from `--cache`/demo, real `mt` / `ksdd` from `--data`)
and evaluated on one it never saw. Prints one JSON row per variant, plan and evaluated set: image AUROC with the
shipped rule (top 0.2 %, not centered: `new`) and the fifth pass's (top 1 % minus the median: `old`), and per
defect type with `--rule`. Seeded; one thread. The cache must hold `--synth` / `--normals` / `--seed` rows built
with `--intensity gain` (they are computed and stored when missing, minutes per set).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).parent))
import train_zeroshot_head as T  # noqa: E402

from normalcy import metrics  # noqa: E402
from normalcy.data import load_mvtec  # noqa: E402
from normalcy.detectors.image.fewshot import sample_references  # noqa: E402
from normalcy.detectors.image.zeroshot import ZeroShot, cell_statistics, local_mean, self_distances, train_head  # noqa: E402
from normalcy.synth.folders import read_float  # noqa: E402
from normalcy.synth.noise import feather, perlin_mask  # noqa: E402

REAL = {"mt": "magnetic_tile", "ksdd": "kolektorsdd"}
PLANS = {"ksdd2mt": (("ksdd", "tiles", "fabric"), "mt"), "mt2ksdd": (("mt", "tiles", "fabric"), "ksdd"),
         "val_k_t": (("ksdd", "tiles"), "fabric"), "val_k_f": (("ksdd", "fabric"), "tiles"),
         "val_m_t": (("mt", "tiles"), "fabric"), "val_m_f": (("mt", "fabric"), "tiles")}
RULES = {"new": (0.002, False), "old": (0.01, True)}


@dataclass(frozen=True)
class Variant:
    """Head inputs and training of one screened variant."""

    wide: int = 0  # N×N means of the cell statistics (the adopted option is 11)
    extra: tuple[int, ...] = ()  # extra in-image distances: 0 = k 50 %; 1-3 = 5×5-pooled features at 10/25/50 %
    extra_local: bool = False  # also the extra distances' 5×5 means
    hidden: int = 32
    epochs: int = 15
    weight_decay: float = 1e-4
    region: bool = False  # add large low-contrast synthesized anomalies to every training set


VARIANTS = {"base": Variant(), "wide11": Variant(wide=11), "d05": Variant(extra=(0,)), "pool": Variant(extra=(1, 2, 3)),
            "both": Variant(extra=(0, 1, 2, 3), extra_local=True), "h16": Variant(hidden=16),
            "h64": Variant(hidden=64), "e40": Variant(epochs=40), "wd1e-2": Variant(weight_decay=1e-2),
            "region": Variant(region=True)}


def extra_distances(x: torch.Tensor, valid: torch.Tensor, n_features: int) -> torch.Tensor:
    """4×h×w: the in-image distance at k = 50 %, and those of 5×5-pooled features at 10 / 25 / 50 %."""
    z, v = x[:n_features].float()[None], valid[None]
    pooled = local_mean(z, 5)
    return torch.cat([self_distances(z, v, (0.5,)), self_distances(pooled, v, (0.1, 0.25, 0.5), exclude=3)], 1)[0]


def features(row: dict, splits: list[int], v: Variant) -> torch.Tensor:
    """D×h×w head inputs of one cached row under a variant."""
    f = cell_statistics(row["x"].float()[None], splits, wide=v.wide)[0]
    if not v.extra:
        return f
    e = extra_distances(row["x"], row["valid"], int(sum(splits)))[list(v.extra)]
    return torch.cat([f, e] + ([local_mean(e[None], 5)[0]] if v.extra_local else []), 0)


def pick(sel: torch.Tensor, cap: int, gen: torch.Generator) -> torch.Tensor:
    """At most `cap` seeded indices of the True cells."""
    idx = sel.nonzero()[:, 0]
    return idx[torch.randperm(len(idx), generator=gen)[:cap]]


def cells(rows: list[dict], feats: list[torch.Tensor], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Training cells as in `train_zeroshot_head.training_cells`, from precomputed inputs."""
    gen = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for r, f in zip(rows, feats):
        x, cover, valid = f.flatten(1).T, r["cover"].float().flatten(), r["valid"].flatten()
        for want, sel, cap in ((1.0, (cover >= T.POS_COVER) & valid, T.MAX_POS), (0.0, (cover == 0) & valid,
                                                                                   T.NEG_PER_IMAGE)):
            idx = pick(sel, cap, gen)
            xs.append(x[idx].float())
            ys.append(torch.full((len(idx),), want))
    return torch.cat(xs), torch.cat(ys)


def region_shape(h: int, w: int, area: float, rng: np.random.Generator) -> np.ndarray:
    """A large region: a low-frequency Perlin blob, a band across the image, or an ellipse."""
    r = rng.random()
    if r < 0.4:
        return perlin_mask((h, w), area, rng, max_res=3)
    if r < 0.7:  # a band across the image, slightly wavy edges
        horiz = rng.random() < 0.5
        n, m = (h, w) if horiz else (w, h)
        thick = max(2, int(round(area * n)))
        start = int(rng.integers(0, max(1, n - thick + 1)))
        wave = ndimage.gaussian_filter1d(rng.normal(0, 1, m), m / 8) * n * 0.03
        idx = np.arange(n)[:, None]
        band = (idx >= start + wave[None]) & (idx < start + thick + wave[None])
        return band if horiz else band.T
    yy, xx = np.mgrid[0:h, 0:w]
    ry = np.sqrt(area * h * w / np.pi) * float(np.exp(rng.uniform(-0.5, 0.5)))
    rx = area * h * w / np.pi / ry
    cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def region_change(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The image changed everywhere by one or two of: gain, local contrast, blur, noise."""
    out = img.astype(np.float32).copy()
    for op in rng.permutation(["gain", "contrast", "blur", "noise"])[: int(rng.integers(1, 3))]:
        if op == "gain":
            out = out * float(np.exp(rng.choice([-1, 1]) * rng.uniform(0.12, 0.4)))
        elif op == "contrast":
            mu = ndimage.gaussian_filter(out, (8, 8, 0))
            out = mu + (out - mu) * float(np.exp(rng.choice([-1, 1]) * rng.uniform(0.3, 0.9)))
        elif op == "blur":
            out = ndimage.gaussian_filter(out, (rng.uniform(1.0, 3.0),) * 2 + (0,))
        else:
            out = out + rng.normal(0, rng.uniform(0.02, 0.06), out.shape).astype(np.float32)
    return out


def region_shift(base: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A large, low-contrast anomaly: the image changed over a region covering 3-35 %, feathered; and its mask."""
    h, w = base.shape[:2]
    region = region_shape(h, w, float(np.exp(rng.uniform(np.log(0.03), np.log(0.35)))), rng)
    if not region.any():
        region[h // 2, w // 2] = True
    out = region_change(base, rng)
    alpha = feather(region, float(rng.uniform(1.0, 4.0)))
    mixed = np.clip(base * (1 - alpha[..., None]) + np.clip(out, 0, 1) * alpha[..., None], 0, 1).astype(np.float32)
    return mixed, alpha >= 0.5


def region_rows(root: Path, det: ZeroShot, n: int, seed: int, path: Path) -> list[dict]:
    """Head inputs of `n` train normals given a region anomaly each (cached at `path`)."""
    if path.is_file():
        return T.load_rows(path)
    train, _ = load_mvtec(root)
    rng = np.random.default_rng(seed + 101)
    items = []
    for p in sample_references([s.path for s in train], min(n, len(train)), seed + 101):
        img, mask = region_shift(read_float(p), rng)
        if mask.any():
            items.append(("synth", T.to_rgb(img), mask))
    rows = T.extract(det, items)
    T.save_rows(rows, path)
    return rows


def set_root(name: str, args: argparse.Namespace) -> Path:
    """Folder of a short set name: a real set under --data or a demo category under --cache/demo."""
    return Path(args.data) / REAL[name] if name in REAL else Path(args.cache).expanduser() / "demo" / name


def training_rows(name: str, det: ZeroShot, v: Variant, args: argparse.Namespace) -> list[dict]:
    """A training set's cached rows, plus its region anomalies for the `region` variant."""
    rows = T.cached_set(set_root(name, args), det, args)
    if v.region:
        path = Path(args.cache).expanduser() / f"extra-region-{name}-{args.region}.safetensors"
        rows = rows + region_rows(set_root(name, args), det, args.region, args.seed, path)
    return rows


def score(det: ZeroShot, maps: list[torch.Tensor], valids: list[torch.Tensor], rule: str) -> np.ndarray:
    """Image scores of cell maps under a named score rule."""
    top, center = RULES[rule]
    det.set_params(top_fraction=top, center=center)
    return np.array([float(det.image_scores(m, v)[0]) for m, v in zip(maps, valids)])


def evaluate(det: ZeroShot, head, rows: list[dict], root: Path, splits: list[int], v: Variant,
             rule: str) -> dict[str, float]:
    """Image AUROC under both rules and per defect type under `rule`, on the held-out set's test images."""
    _, test = load_mvtec(root)
    real = [r for r in rows if r["part"] == "real"]
    if len(real) != len(test):
        raise SystemExit(f"cache of {root} holds {len(real)} test images, the folder {len(test)}")
    maps = [head.maps(features(r, splits, v)[None]) for r in real]
    valids = [r["valid"][None] for r in real]
    labels, types = np.array([s.label for s in test]), np.array([Path(s.path).parent.name for s in test])
    out = {f"image_auroc_{k}": round(metrics.auroc(labels, score(det, maps, valids, k)), 4) for k in RULES}
    scores = score(det, maps, valids, rule)
    for t in sorted(set(types) - {"good"}):
        sel = (types == t) | (labels == 0)
        out[f"{rule}_{t}"] = round(metrics.auroc(labels[sel], scores[sel]), 3)
    return out


def run_plan(det: ZeroShot, name: str, v: Variant, plan: str, args: argparse.Namespace) -> dict:
    """Train a head on a plan's sets under a variant and evaluate it on the held-out one."""
    splits = det.stage_splits()
    train, held = PLANS[plan]
    t0 = time.perf_counter()
    rows = [training_rows(n, det, v, args) for n in train]
    xy = [cells(r, [features(x, splits, v) for x in r], args.seed) for r in rows]
    x, y = torch.cat([a for a, _ in xy]), torch.cat([b for _, b in xy])
    head = train_head(x, y, hidden=v.hidden, epochs=v.epochs, seed=args.seed, weight_decay=v.weight_decay)
    held_rows = T.cached_set(set_root(held, args), det, args)
    res = evaluate(det, head, held_rows, set_root(held, args), splits, v, args.rule)
    return {"variant": name, "plan": plan, "eval": held, **res, "s": round(time.perf_counter() - t0)}


def parse(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="folder holding magnetic_tile/ and kolektorsdd/ (MVTec layout)")
    p.add_argument("--cache", default="~/.cache/normalcy/zeroshot",
                   help="train_zeroshot_head.py's cache folder (demo data, cached head inputs)")
    p.add_argument("--variants", default="base", help=f"comma-separated, of {','.join(VARIANTS)}")
    p.add_argument("--plans", default="val_k_t", help=f"comma-separated, of {','.join(PLANS)}")
    p.add_argument("--rule", default="new", choices=list(RULES), help="score rule of the per-type figures")
    p.add_argument("--region", type=int, default=150, help="train normals per set given a region anomaly")
    p.add_argument("--synth", type=int, default=150, help="as train_zeroshot_head.py (selects the cache)")
    p.add_argument("--normals", type=int, default=60, help="as train_zeroshot_head.py (selects the cache)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.intensity = "gain"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    torch.set_num_threads(1)
    det = ZeroShot(progress=False, intensity="gain")
    for name in args.variants.split(","):
        for plan in args.plans.split(","):
            print(json.dumps(run_plan(det, name, VARIANTS[name], plan, args)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
