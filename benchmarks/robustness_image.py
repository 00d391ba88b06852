"""Robustness of the default image detector to two failure patterns seen on outside sets (issue 15).

(a) `brightness`: the test images (normal and defective) re-scaled in intensity (gain ×0.8 / ×1.2, gamma 0.7 / 1.4,
    and "mixed": each test image gets one of those or none, seeded) against unchanged; image / pixel AUROC, AUPRO.
    Fit-side remedies are variants: `jitter` (the fit images plus gain/gamma copies, `intensity_jitter=True`) and
    `gain` (every image, fit and test, scaled so its mean grey level is 0.5 before the backbone).
(b) `modes`: a normal set pooled from two populations, scored by one pooled model and by one model per normal mode:
    "mt+ksdd" (two products on one canvas) and "mt+inverted" (magnetic_tile plus other magnetic_tile images under
    contrast inversion). Pooled image AUROC and the AUROC within each population; `per-mode` fits one detector per
    mode found by `normalcy.calibration.groups.find_modes` on the fit images (test images go to the nearest mode);
    `modes=auto` is PatchCore's own per-mode scoring (shared bank, per-mode Gaussian and normalizers).

Usage:
  python benchmarks/robustness_image.py ../shared/data/magnetic_tile ../shared/data/kolektorsdd \
      [--parts brightness,modes] [--train 100 --test 150] [--cache DIR]
Subsamples are seeded; nothing is tuned on test labels. Features are cached in DIR (one file per image list).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from normalcy import metrics
from normalcy.apps.bench.images import masks_for
from normalcy.calibration.groups import find_modes, item_descriptors
from normalcy.data import as_rgb_array, load_mvtec
from normalcy.detectors import create_detector
from normalcy.detectors.image.common import CachedFeatures
from normalcy.detectors.image.intensity import gain_normalize, intensity_shift
from normalcy.features.preprocess import Placement

SHIFTS = ("gain0.8", "gain1.2", "gamma0.7", "gamma1.4")
METRICS = ("image_auroc", "pixel_auroc", "aupro")


def shift(img: np.ndarray, name: str) -> np.ndarray:
    """A uint8 image under named global intensity changes ("none", "gainG", "gammaG", "invert", "mean0.5"; "a+b")."""
    if "+" in name:
        for part in name.split("+"):
            img = shift(img, part)
        return img
    if name.startswith("gain"):
        return intensity_shift(img, "gain", float(name[4:]))
    if name.startswith("gamma"):
        return intensity_shift(img, "gamma", float(name[5:]))
    if name == "invert":
        return 255 - img
    if name == "mean0.5":  # global gain only: mean grey level 0.5, as PatchCore's intensity="gain"
        return gain_normalize(img)
    if name != "none":
        raise ValueError(name)
    return img


def subsample(items: list, n: int | None, seed: int) -> list:
    """A seeded subsample of at most `n` items in the original order."""
    if n is None or n >= len(items):
        return list(items)
    keep = np.random.default_rng(seed).choice(len(items), n, replace=False)
    return [items[i] for i in sorted(keep)]


def features(det: Any, samples: list, transforms: list[str], cache: Path | None, tag: str) -> list[CachedFeatures]:
    """Patch features of the samples, each under its transform, on det's canvas (cached on disk by content key)."""
    key = hashlib.sha1(repr((tag, det.canvas, det.backbone, [str(s.path) for s in samples], transforms)).encode())
    path = None if cache is None else cache / f"{key.hexdigest()[:16]}.pt"
    if path is not None and path.exists():  # tensors, lists and numbers only: no pickle of objects
        return [CachedFeatures(r["feats"], Placement(*r["placement"]), r["valid"], r["raw"], None)
                for r in torch.load(path, weights_only=True)]
    arrays = [shift(as_rgb_array(s), t) for s, t in zip(samples, transforms)]
    out = det._cache_features(arrays)
    for c in out:
        c.source = None  # keep the cache small; fitting and scoring use the features only
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save([{"feats": c.feats, "placement": list(dataclasses.astuple(c.placement)), "valid": c.valid,
                     "raw": bool(c.raw)} for c in out], path)
    return out


def evaluate(det: Any, test: list, feats: list, labels: np.ndarray) -> dict[str, float]:
    """Image AUROC, pixel AUROC and AUPRO of a fitted detector on cached test features."""
    res = det.score(feats)
    row = {"image_auroc": metrics.auroc(labels, res.scores)}
    row.update(metrics.pixel_metrics(masks_for(test, res.maps), res.maps))
    row["scores"] = res.scores
    return row


def new_detector(**params: Any) -> Any:
    return create_detector("patchcore", **{"progress": False, "calibration_fraction": 0.0, **params})


def brightness(root: str, n_train: int, n_test: int, seed: int, cache: Path | None, variants: list[str]) -> list:
    """Part (a) on one set: rows (variant, test condition, image AUROC, pixel AUROC, AUPRO)."""
    train, test = load_mvtec(root)
    train, test = subsample(train, n_train, seed), subsample(test, n_test, seed + 1)
    labels = np.array([s.label for s in test])
    mixed = [["none", *SHIFTS][k] for k in np.random.default_rng(seed + 2).integers(0, len(SHIFTS) + 1, len(test))]
    conditions = {"none": ["none"] * len(test), **{s: [s] * len(test) for s in SHIFTS}, "mixed": mixed}
    rows = []
    for variant in variants:
        params = {"intensity_jitter": True} if variant == "jitter" else {}
        det = new_detector(**params)
        det._fit_canvas(train)
        tr = features(det, train, ["mean0.5" if variant == "gain" else "none"] * len(train), cache, "")
        t0 = time.perf_counter()
        if variant == "jitter":  # the jitter copies are made from the images, so fit on the samples themselves
            det.fit(train)
        else:
            det.fit(tr)
        fit_s = time.perf_counter() - t0
        for cond, ts in conditions.items():
            te = features(det, test, [f"{t}+mean0.5" if variant == "gain" else t for t in ts], cache, "")
            r = evaluate(det, test, te, labels)
            rows.append((Path(root).name, variant, cond, *(r[m] for m in METRICS)))
            print(f"[brightness] {Path(root).name:14s} {variant:8s} {cond:9s} "
                  + " ".join(f"{m}={r[m]:.4f}" for m in METRICS) + f" (fit {fit_s:.0f}s)", flush=True)
    return rows


def two_populations(pair: str, roots: dict[str, str], n_train: int, n_test: int, seed: int) -> tuple:
    """(train, train transforms, train population, test, test transforms, test population) of a pooled pair."""
    mt_train, mt_test = load_mvtec(roots["magnetic_tile"])
    if pair == "mt+ksdd":
        ks_train, ks_test = load_mvtec(roots["kolektorsdd"])
        parts = [(subsample(mt_train, n_train, seed), subsample(mt_test, n_test, seed + 1), "none"),
                 (subsample(ks_train, n_train, seed), subsample(ks_test, n_test, seed + 1), "none")]
    elif pair == "mt+inverted":  # two disjoint halves of one subsample; the second half contrast-inverted
        tr, te = subsample(mt_train, 2 * n_train, seed), subsample(mt_test, 2 * n_test, seed + 1)
        parts = [(tr[0::2], te[0::2], "none"), (tr[1::2], te[1::2], "invert")]
    else:
        raise ValueError(pair)
    out: tuple = ([], [], [], [], [], [])
    for k, (tr, te, t) in enumerate(parts):
        out[0].extend(tr), out[1].extend([t] * len(tr)), out[2].extend([k] * len(tr))
        out[3].extend(te), out[4].extend([t] * len(te)), out[5].extend([k] * len(te))
    return out[0], out[1], np.array(out[2]), out[3], out[4], np.array(out[5])


def aurocs(labels: np.ndarray, scores: np.ndarray, pop: np.ndarray) -> list[float]:
    """Pooled image AUROC, then the AUROC within each population."""
    return [metrics.auroc(labels, scores)] + [metrics.auroc(labels[pop == k], scores[pop == k]) for k in (0, 1)]


def modes(pair: str, roots: dict[str, str], n_train: int, n_test: int, seed: int, cache: Path | None) -> list:
    """Part (b): rows (pair, model, modes found, pooled AUROC, AUROC pop 0, AUROC pop 1, pixel AUROC, AUPRO)."""
    train, t_tr, pop_tr, test, t_te, pop_te = two_populations(pair, roots, n_train, n_test, seed)
    labels = np.array([s.label for s in test])
    det = new_detector()
    det._fit_canvas(train)
    tr = features(det, train, t_tr, cache, pair)
    te = features(det, test, t_te, cache, pair)
    masks = None
    rows = []

    def report(model: str, n_modes: Any, scores: np.ndarray, maps: list | None) -> None:
        nonlocal masks
        pix = [float("nan")] * 2
        if maps is not None:
            masks = masks if masks is not None else masks_for(test, maps)
            pm = metrics.pixel_metrics(masks, maps)
            pix = [pm["pixel_auroc"], pm["aupro"]]
        rows.append((pair, model, n_modes, *aurocs(labels, scores, pop_te), *pix))
        print(f"[modes] {pair:12s} {model:22s} modes={n_modes} pooled/pop0/pop1=" + " / ".join(
            f"{v:.4f}" for v in rows[-1][3:6]) + " pix/aupro=" + " / ".join(f"{v:.4f}" for v in pix), flush=True)

    det.fit(tr)
    res = det.score(te)
    report("pooled", 1, res.scores, res.maps)
    # one model per known population (the oracle split)
    scores, maps = np.zeros(len(te)), [None] * len(te)
    for k in (0, 1):
        d = new_detector()
        d.fit([f for f, p in zip(tr, pop_tr) if p == k])
        r = d.score([f for f, p in zip(te, pop_te) if p == k])
        scores[pop_te == k] = r.scores
        for i, m in zip(np.flatnonzero(pop_te == k), r.maps):
            maps[i] = m
    report("per-population (oracle)", 2, scores, maps)
    # one model per mode found on the fit images' thumbnails, as calibration's groups="auto" does
    desc_tr = item_descriptors([shift(as_rgb_array(s), t) for s, t in zip(train, t_tr)], "image")
    found, model = find_modes(desc_tr, min_size=10, seed=seed)
    if model is not None:
        desc_te = item_descriptors([shift(as_rgb_array(s), t) for s, t in zip(test, t_te)], "image")
        route = model.assign(desc_te)
        scores, maps = np.zeros(len(te)), [None] * len(te)
        for g in np.unique(found):
            d = new_detector()
            d.fit([f for f, m in zip(tr, found) if m == g])
            idx = np.flatnonzero(route == g)
            if idx.size:
                r = d.score([te[i] for i in idx])
                scores[idx] = r.scores
                for i, m in zip(idx, r.maps):
                    maps[i] = m
        report("per-mode (thumbnails)", len(np.unique(found)), scores, maps)
    else:
        report("per-mode (thumbnails)", 1, res.scores, res.maps)
    d = new_detector(modes="auto")
    d.fit(tr)
    r = d.score(te)
    report("modes=auto", d.n_modes_, r.scores, r.maps)
    return rows


def demo(variants: list[str], out: Path, seeds: tuple[int, ...] = (0,)) -> list:
    """`normalcy demo`'s two synthetic sets with each fit-side variant: rows (category, variant, img, pix, AUPRO).

    More `seeds` draw other demo sets (and splits) to see how far one set's figures move by chance; seed 0 is
    the set `normalcy demo` makes (its rows are named by the variant alone, the others "<variant>@s<seed>").
    """
    from normalcy.apps.demo import run_demo

    params = {"default": {}, "jitter": {"intensity_jitter": True}, "gain": {"intensity": "gain"},
              "modes": {"modes": "auto"}, "lite1": {"backbone": "efficientnet_lite1"},
              "lite2": {"backbone": "efficientnet_lite2"}, "hflip": {"test_views": ("identity", "hflip")},
              "hvflip": {"test_views": ("identity", "hflip", "vflip")}, "refit": {"refit_holdout": True},
              "norefit": {"refit_holdout": False}, "context": {"context": True},
              "crossfit": {"crossfit": True}, "lw": {"position_shrinkage": "identity"},
              "nolw": {"position_shrinkage": None},
              "lwpool": {"position_shrinkage": "pooled"}, "nb3": {"position_neighbourhood": 3},
              "nb3+lw": {"position_neighbourhood": 3, "position_shrinkage": "identity"},
              "nb3+lwpool": {"position_neighbourhood": 3, "position_shrinkage": "pooled"},
              "refit+lw": {"refit_holdout": True, "position_shrinkage": "identity"},
              "lite2+context": {"backbone": "efficientnet_lite2", "context": True}}  # the default: intensity="gain"
    rows = []
    for seed in seeds:
        for variant in variants:
            name = variant if seed == 0 else f"{variant}@s{seed}"
            for r in run_demo(out / name, seed=seed, params={**params[variant], "progress": False},
                              echo=lambda *_: None):
                rows.append((r["category"], name, r["image_auroc"], r["pixel_auroc"], r["aupro"]))
                print(f"[demo] {r['category']:8s} {name:8s} " + " ".join(f"{v:.4f}" for v in rows[-1][2:]),
                      flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("roots", nargs="*", help="magnetic_tile and kolektorsdd (MVTec layout)")
    ap.add_argument("--parts", default="brightness,modes", help="brightness, modes, demo (normalcy demo's sets)")
    ap.add_argument("--variants", default="default,jitter,gain", help="fit-side variants for brightness and demo")
    ap.add_argument("--pairs", default="mt+ksdd,mt+inverted", help="part (b) pooled pairs")
    ap.add_argument("--train", type=int, default=100)
    ap.add_argument("--test", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--demo-seeds", default="0", help="demo sets to draw (0 = the one `normalcy demo` makes)")
    ap.add_argument("--cache", type=Path, help="folder for cached features (reused across runs)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    parts = args.parts.split(",")
    if "brightness" in parts:
        rows = []
        for root in args.roots:
            rows += brightness(root, args.train, args.test, args.seed, args.cache, args.variants.split(","))
        print("| set | variant | test images | image AUROC | pixel AUROC | AUPRO |\n|---|---|---|---|---|---|")
        for r in rows:
            print("| " + " | ".join(r[:3]) + " | " + " | ".join(f"{v:.3f}" for v in r[3:]) + " |")
    if "demo" in parts:
        seeds = tuple(int(v) for v in args.demo_seeds.split(","))
        rows = demo(args.variants.split(","), args.cache or Path("robustness-demo"), seeds)
        print("| demo set | variant | image AUROC | pixel AUROC | AUPRO |\n|---|---|---|---|---|")
        for r in rows:
            print(f"| {r[0]} | {r[1]} | " + " | ".join(f"{v:.3f}" for v in r[2:]) + " |")
    if "modes" in parts:
        roots = {Path(r).name: r for r in args.roots}
        rows = []
        for pair in args.pairs.split(","):
            rows += modes(pair, roots, args.train, args.test, args.seed, args.cache)
        print("| pair | model | modes | pooled AUROC | AUROC pop 0 | AUROC pop 1 | pixel AUROC | AUPRO |")
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r[0]} | {r[1]} | {r[2]} | " + " | ".join(f"{v:.3f}" for v in r[3:]) + " |")


if __name__ == "__main__":
    main()
