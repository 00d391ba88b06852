"""Coverage of calibrated decisions over repeated random splits of normal data (issue 17).

For R random re-splits of the pooled normal data into a fit pool (the detector's own `fit`, which holds out its
calibration scores or cross-fits) and test normals, records the realized false-alarm rate at alpha 0.01 and 0.05
and compares it with the exact distribution a split-conformal threshold gives: the number of test normals above
the threshold is Beta-Binomial(n_test, k, n_cal + 1 - k) with k = floor(alpha (n_cal + 1)), mean k / (n_cal + 1).
Image sets also run the official train/test split once (is the data split itself exchangeable?) and report recall
on the defects. Backbone features are extracted once per image (cached under --cache) and reused by every split.

Usage:
  python benchmarks/coverage.py --images ../shared/data/magnetic_tile ../shared/data/kolektorsdd --repeats 10
  python benchmarks/coverage.py --tabular ../shared/data/tabular --repeats 50 [--small 60]
Writes docs/coverage_<set>_<detector>.png (matplotlib) and prints a markdown table (+ --json).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from normalcy.data import load_mvtec
from normalcy.detectors import create_detector

ALPHAS = (0.01, 0.05)  # coverage checked against the exact distribution
TABLE_ALPHAS = (0.005, 0.01, 0.02, 0.05, 0.1)  # realized FPR and recall per alpha (choice of the default)
TABULAR_SETS = ("2_annthyroid", "6_cardio", "23_mammography", "38_thyroid", "29_Pima")
ROOT = Path(__file__).resolve().parents[1]


# ---- the reference distribution -----------------------------------------------------------------------------
def conformal_band(n_cal: int, n_test: int, alpha: float, level: float = 0.95) -> dict:
    """Exact mean and central band of the realized FPR of a split-conformal threshold (Beta-Binomial)."""
    k = math.floor(alpha * (n_cal + 1) + 1e-9)
    if k == 0 or n_test == 0:
        return {"k": k, "mean": 0.0, "lo": 0.0, "hi": 0.0, "dist": None}
    dist = stats.betabinom(n_test, k, n_cal + 1 - k)
    lo, hi = dist.ppf((1 - level) / 2), dist.ppf((1 + level) / 2)
    return {"k": k, "mean": k / (n_cal + 1), "lo": lo / n_test, "hi": hi / n_test, "dist": dist}


def mid_pit(dist, count: int) -> float:
    """Mid-p position of an observed count in its reference distribution (uniform on (0, 1) if it fits)."""
    if dist is None:
        return float("nan")
    return float(dist.cdf(count - 1) + 0.5 * dist.pmf(count))


# ---- one split ----------------------------------------------------------------------------------------------
def p_values(det, result, alpha: float, groups=None) -> np.ndarray:
    """p-values through the detector's own decision path (fold models and groups included)."""
    kw = {} if groups is None else {"groups": groups}
    return np.array([q.p_value for q in det.decide(result, alpha=alpha, **kw)])


def realized(det, normal, defect=None, groups=None, alphas=TABLE_ALPHAS) -> dict:
    """Realized FPR on test normals (and TPR on defects) per alpha from the detector's own calibration."""
    cal = det.calibration_
    row = {"n_cal": cal.n, "n_test": int(np.size(normal.scores)), "method": cal.method}
    if getattr(normal, "fold_scores", None):  # how much the fold models agree on the same test normals
        row["fold_rho"] = fold_agreement(normal.fold_scores)
    for a in alphas:
        p_n = p_values(det, normal, a, groups)
        row["median_p"] = float(np.median(p_n))
        row[f"fp@{a}"] = int((p_n <= a).sum())
        row[f"fpr@{a}"] = float((p_n <= a).mean())
        if cal.cross:  # the single-number threshold (pooled out-of-fold scores vs the refitted model's score)
            row[f"thr_fpr@{a}"] = float((np.asarray(normal.scores) > cal.threshold(a)).mean())
        if defect is not None and np.size(defect.scores):
            row[f"tpr@{a}"] = float((p_values(det, defect, a) <= a).mean())
    return row


def fold_agreement(fold_scores: list[np.ndarray]) -> float:
    """Mean Spearman correlation between the fold models' scores of the same items (1 = they rank alike)."""
    k = len(fold_scores)
    rhos = [stats.spearmanr(fold_scores[i], fold_scores[j])[0] for i in range(k) for j in range(i + 1, k)]
    return float(np.mean(rhos)) if rhos else float("nan")


# ---- images -------------------------------------------------------------------------------------------------
def cached_features(det, samples: list, path: Path, n_canvas: int = 0) -> list:
    """Backbone patch features per image, computed once (1 thread) and stored beside the other caches.

    With resize_mode="aspect" the canvas is picked from the first `n_canvas` samples (the official train images),
    as `fit` would; every re-split then reuses it (fit on cached features keeps the canvas they were made on).
    """
    from dataclasses import asdict

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from normalcy.detectors.image.common import CachedFeatures
    from normalcy.features.preprocess import Placement

    samples = list(samples)
    path = path.with_suffix(".safetensors")  # tensors + JSON placements: never pickle
    if path.exists():
        with safe_open(str(path), "pt") as fh:
            meta = json.loads(fh.metadata()["placements"])
        tensors = load_file(path)
        return [CachedFeatures(tensors[f"f{i}"], Placement(**pl), tensors[f"v{i}"], False, samples[i])
                for i, pl in enumerate(meta)]
    t0 = time.perf_counter()
    det._fit_canvas(samples[:n_canvas] if n_canvas else samples)  # resize_mode="aspect": the fit images' canvas
    cached = det._cache_features(samples)
    if any(c.raw for c in cached):
        raise SystemExit("coverage.py caches patch features only (raw stage outputs are not supported)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"f{i}": c.feats.contiguous() for i, c in enumerate(cached)}
    tensors |= {f"v{i}": c.valid.contiguous() for i, c in enumerate(cached)}
    save_file(tensors, path, metadata={"placements": json.dumps([asdict(c.placement) for c in cached])})
    print(f"  cached {len(cached)} images -> {path} ({time.perf_counter() - t0:.0f}s)", flush=True)
    return cached



FEATURE_PARAMS = ("backbone", "weights", "image_size", "resize_mode", "strides", "aggregate", "project_dim")


def cache_key(root: Path, detector: str, det, params: dict) -> str:
    """Cache file name: the set, the detector, its given parameters and every feature parameter's value.

    The feature parameters are spelled out even when left at their defaults, so a changed default (e.g. another
    backbone) never reuses features made with the old one.
    """
    given = "_".join(f"{k}{v}" for k, v in sorted(params.items()) if k != "alpha" and k not in FEATURE_PARAMS)
    feats = "_".join(f"{getattr(det, k, None)}".replace(" ", "").replace("/", "-") for k in FEATURE_PARAMS)
    return f"{root.name}_{detector}_{given}_{feats}"


def image_scores(det, cached: list, batch: int = 64):
    """Scores from cached features by the detector's own scoring (and each kept fold model), without maps."""
    from normalcy.detectors.base import ScoreResult

    def one() -> np.ndarray:
        out = []
        for start in range(0, len(cached), batch):
            feats, _, valid = det._stack_cached(cached[start : start + batch], cached[0].raw)
            out.append(det._score_features(feats.float(), valid)[0].double().numpy())
        return np.concatenate(out) if out else np.empty(0)

    result = ScoreResult(one())
    states = getattr(det, "fold_states_", None)
    if states:
        from normalcy.calibration.folds import using

        result.fold_scores = []
        for state in states:
            with using(det, state):
                result.fold_scores.append(one())
    return result


def run_images(root: Path, detector: str, repeats: int, cache: Path, params: dict, first: int = 0,
               tpr_splits: int | None = None) -> list[dict]:
    """Official split once, then `repeats` random re-splits of the pooled normals with the official sizes.

    `first` > 0 continues an earlier run with re-splits first, first + 1, ... (the official split is not repeated);
    defects are scored (recall) only in the first `tpr_splits` re-splits when given (coverage needs normals only).
    """
    train, test = load_mvtec(root)
    normals = [s for s in test if s.label == 0]
    defects = [s for s in test if s.label == 1]
    base = create_detector(detector, progress=False, **params)
    feats = cached_features(base, train + normals + defects, cache / f"{cache_key(root, detector, base, params)}.pt",
                            n_canvas=len(train))
    n_tr, n_te = len(train), len(normals)
    pool = feats[: n_tr + n_te]
    defect_feats = feats[n_tr + n_te :]
    rows = []
    splits = [] if first else [(0, "official", np.arange(n_tr), np.arange(n_tr, n_tr + n_te))]
    for r in range(first, first + repeats):
        perm = np.random.default_rng(1000 + r).permutation(n_tr + n_te)
        splits.append((r + 1, f"resplit-{r}", np.sort(perm[:n_tr]), np.sort(perm[n_tr:])))
    for seed, kind, fit_idx, test_idx in splits:
        t0 = time.perf_counter()
        det = create_detector(detector, progress=False, seed=seed, **params)
        det.fit([pool[i] for i in fit_idx])
        score_defects = tpr_splits is None or seed <= tpr_splits
        row = realized(det, image_scores(det, [pool[i] for i in test_idx]),
                       image_scores(det, defect_feats) if score_defects else None)
        row |= {"set": root.name, "detector": detector, "split": kind, "seconds": time.perf_counter() - t0}
        print("   ", _short(row), flush=True)
        rows.append(row)
    return rows


def run_mix(roots: list[Path], detector: str, repeats: int, cache: Path, params: dict, modes: list[str]) -> list[dict]:
    """Two products' normals as one set: pooled calibration vs per-product groups vs groups found by k-means.

    Features of both products are made on one canvas, the one `fit` picks from all training images together (one
    model for a mixed line sees every image at the same size; each set's own cache has its own canvas).
    """
    trains, normals = [], []
    for root in roots:
        train, test = load_mvtec(root)
        trains.append(train)
        normals.append([s for s in test if s.label == 0])
    base = create_detector(detector, progress=False, **params)
    key = cache_key(Path("+".join(r.name for r in roots)), detector, base, params)
    samples = [s for t in trains for s in t] + [s for n in normals for s in n]
    feats = cached_features(base, samples, cache / f"mix_{key}.pt", n_canvas=sum(len(t) for t in trains))
    n_train = sum(len(t) for t in trains)
    pools, labels = [], []
    start_tr, start_n = 0, n_train
    for root, train, norm in zip(roots, trains, normals):
        pools += feats[start_tr : start_tr + len(train)] + feats[start_n : start_n + len(norm)]
        labels += [root.name] * (len(train) + len(norm))
        start_tr, start_n = start_tr + len(train), start_n + len(norm)
    labels = np.array(labels)
    rows = []
    for r in range(repeats):
        rng = np.random.default_rng(3000 + r)
        fit_idx, test_idx = [], []
        for g in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == g))
            cut = int(round(0.6 * len(idx)))
            fit_idx += idx[:cut].tolist()
            test_idx += idx[cut:].tolist()
        for mode in modes:
            t0 = time.perf_counter()
            det = create_detector(detector, progress=False, seed=r, **params)
            groups = {"pooled": None, "groups": labels[fit_idx], "auto": "auto"}[mode]
            det.fit([pools[i] for i in fit_idx], **({} if groups is None else {"groups": groups}))
            for g in np.unique(labels):
                sel = [i for i in test_idx if labels[i] == g]
                res = image_scores(det, [pools[i] for i in sel])
                given = None
                if mode == "groups":
                    given = [g] * len(sel)
                elif mode == "auto" and det.calibration_.groups:
                    res.groups = det.group_model_.assign(item_descriptors_of(det, [pools[i] for i in sel]))
                row = realized(det, res, groups=given)
                if mode != "pooled" and det.calibration_.groups:
                    found = given[0] if given else None
                    row["n_cal"] = det.calibration_.group(found).n if found else row["n_cal"]
                    row["n_groups"] = len(det.calibration_.groups)
                row |= {"set": f"{g}+mix", "detector": f"{detector}/{mode}", "split": f"resplit-{r}",
                        "seconds": time.perf_counter() - t0}
                print("   ", row["set"], row["detector"], _short(row), flush=True)
                rows.append(row)
    return rows


def item_descriptors_of(det, items: list) -> np.ndarray:
    """The descriptors automatic grouping uses (thumbnails of the cached images' sources)."""
    from normalcy.calibration.groups import item_descriptors

    return item_descriptors(items, det.kind)


# ---- tables -------------------------------------------------------------------------------------------------
def run_tabular(path: Path, detector: str, repeats: int, small: int | None, max_rows: int,
                params: dict | None = None) -> list[dict]:
    """Random re-splits of the normal rows: 60 % (or `small` rows) to fit, the rest to test; anomalies for TPR."""
    data = np.load(path)
    X, y = np.asarray(data["X"], dtype=np.float64), np.asarray(data["y"]).astype(int)
    normal, anomalous = X[y == 0], X[y == 1]
    rows = []
    for r in range(repeats):
        rng = np.random.default_rng(2000 + r)
        perm = rng.permutation(len(normal))[:max_rows]
        n_fit = small if small else int(round(0.6 * len(perm)))
        det = create_detector(detector, seed=r, **(params or {}))
        det.fit(normal[perm[:n_fit]])
        row = realized(det, det.score(normal[perm[n_fit:]]), det.score(anomalous))
        row |= {"set": path.stem, "detector": detector, "split": f"resplit-{r}" + (f"-n{small}" if small else "")}
        rows.append(row)
    return rows


# ---- summary, plot ------------------------------------------------------------------------------------------
def summarize(rows: list[dict]) -> list[dict]:
    """Per (set, detector, alpha): mean realized FPR over re-splits vs the exact conformal mean and band."""
    out = []
    keys = sorted({(r["set"], r["detector"]) for r in rows})
    for s, d in keys:
        res = [r for r in rows if r["set"] == s and r["detector"] == d and r["split"].startswith("resplit")]
        off = [r for r in rows if r["set"] == s and r["detector"] == d and r["split"] == "official"]
        if not res:
            continue
        for a in ALPHAS:
            fpr = np.array([r[f"fpr@{a}"] for r in res])
            pits, expected, inside = [], [], []
            for r in res:
                band = conformal_band(r["n_cal"], r["n_test"], a)
                pits.append(mid_pit(band["dist"], r[f"fp@{a}"]))
                expected.append(band["mean"])
                inside.append(band["lo"] <= r[f"fpr@{a}"] <= band["hi"])
            row = {"set": s, "detector": d, "alpha": a, "R": len(res),
                   "n_cal": int(np.median([r["n_cal"] for r in res])),
                   "n_test": int(np.median([r["n_test"] for r in res])), "method": res[0]["method"],
                   "mean_fpr": float(fpr.mean()), "sd_fpr": float(fpr.std(ddof=1)) if len(fpr) > 1 else 0.0,
                   "expected": float(np.mean(expected)),
                   "sd_expected": float(np.mean([_sd(conformal_band(r["n_cal"], r["n_test"], a)) for r in res])),
                   "in_band": float(np.mean(inside)), "mean_pit": float(np.nanmean(pits)),
                   "median_p": float(np.median([r["median_p"] for r in res])), "p_bias": mean_tail(res, a)}
            if any(f"tpr@{a}" in r for r in res):  # recall over the splits that scored the defects (--tpr-splits)
                row["mean_tpr"] = float(np.mean([r[f"tpr@{a}"] for r in res if f"tpr@{a}" in r]))
            if "fold_rho" in res[0]:
                row["fold_rho"] = float(np.mean([r["fold_rho"] for r in res]))
            if f"thr_fpr@{a}" in res[0]:
                row["thr_fpr"] = float(np.mean([r[f"thr_fpr@{a}"] for r in res]))
            if off:
                o = off[0]
                band = conformal_band(o["n_cal"], o["n_test"], a)
                row |= {"official_fpr": o[f"fpr@{a}"], "official_pit": mid_pit(band["dist"], o[f"fp@{a}"]),
                        "official_median_p": o["median_p"], "official_tpr": o.get(f"tpr@{a}")}
            out.append(row)
    return out


def mean_tail(res: list[dict], alpha: float, draws: int = 20000, seed: int = 0) -> float:
    """Two-sided chance that the mean realized FPR over these splits lands this far from the exact mean.

    Simulates each split's false-alarm count from its own exact Beta-Binomial(n_test, k, n_cal + 1 - k) and
    compares the simulated means of R splits with the observed one (a bias test that needs no normal
    approximation: a threshold at the largest of 99 scores gives a skewed, exponential-like FPR).
    """
    rng = np.random.default_rng(seed)
    sims, observed = np.zeros(draws), 0.0
    for r in res:
        band = conformal_band(r["n_cal"], r["n_test"], alpha)
        observed += r[f"fpr@{alpha}"] / len(res)
        if band["dist"] is not None:
            sims += band["dist"].rvs(size=draws, random_state=rng) / r["n_test"] / len(res)
    low, high = float((sims <= observed + 1e-12).mean()), float((sims >= observed - 1e-12).mean())
    return min(1.0, 2.0 * min(low, high))


def _sd(band: dict) -> float:
    return 0.0 if band["dist"] is None else float(band["dist"].std() / band["dist"].args[0])


def _short(row: dict) -> str:
    parts = [row["split"], row["method"], f"n_cal={row['n_cal']}", f"n_test={row['n_test']}",
             f"median_p={row['median_p']:.2f}"]
    parts += [f"fpr@{a}={row[f'fpr@{a}']:.4f}" for a in ALPHAS]
    parts += [f"tpr@{a}={row[f'tpr@{a}']:.3f}" for a in ALPHAS if f"tpr@{a}" in row]
    return " ".join(parts) + (f" ({row['seconds']:.0f}s)" if "seconds" in row else "")


def print_table(summary: list[dict]) -> None:
    print("| set | detector | alpha | R | method | n_cal | n_test | mean FPR (sd) | exact mean (sd) | mean/alpha - 1 "
          "(2 SE) | P(mean this far) | in 95% band | mean PIT | official FPR (PIT) | mean TPR |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in summary:
        off = f"{r['official_fpr']:.4f} ({r['official_pit']:.2f})" if "official_fpr" in r else "-"
        tpr = f"{r['mean_tpr']:.3f}" if "mean_tpr" in r else "-"
        print(f"| {r['set']} | {r['detector']} | {r['alpha']} | {r['R']} | {r['method']} | {r['n_cal']} | "
              f"{r['n_test']} | {r['mean_fpr']:.4f} ({r['sd_fpr']:.4f}) | {r['expected']:.4f} ({r['sd_expected']:.4f})"
              f" | {r['mean_fpr'] / r['alpha'] - 1:+.0%} (±{2 * r['sd_fpr'] / np.sqrt(r['R']) / r['alpha']:.0%})"
              f" | {r.get('p_bias', float('nan')):.2f} | {r['in_band']:.2f} | {r['mean_pit']:.2f} | {off} | {tpr} |")


def print_fold_table(summary: list[dict]) -> None:
    """Cross-conformal runs: realized FPR against how much the fold models agree."""
    cc = [r for r in summary if "fold_rho" in r]
    if not cc:
        return
    print("\n| set | detector | alpha | R | fold-model rank correlation | mean FPR | exact split-conformal mean | "
          "P(mean this far) | FPR of refit score > threshold() |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in sorted(cc, key=lambda r: (r["alpha"], r["fold_rho"])):
        thr = f"{r['thr_fpr']:.4f}" if "thr_fpr" in r else "-"
        print(f"| {r['set']} | {r['detector']} | {r['alpha']} | {r['R']} | {r['fold_rho']:.3f} | {r['mean_fpr']:.4f} | "
              f"{r['expected']:.4f} | {r['p_bias']:.2f} | {thr} |")


def print_alpha_table(rows: list[dict]) -> None:
    """Mean realized FPR and recall per alpha over all splits (official included), per set and detector."""
    print("\n| set | detector | " + " | ".join(f"FPR / recall @ {a}" for a in TABLE_ALPHAS) + " |")
    print("|---|---|" + "---|" * len(TABLE_ALPHAS))
    for s, d in sorted({(r["set"], r["detector"]) for r in rows}):
        res = [r for r in rows if r["set"] == s and r["detector"] == d]
        cells = []
        for a in TABLE_ALPHAS:
            if not any(f"fpr@{a}" in r for r in res):
                cells.append("-")
                continue
            fpr = np.mean([r[f"fpr@{a}"] for r in res if f"fpr@{a}" in r])
            tpr = [r[f"tpr@{a}"] for r in res if f"tpr@{a}" in r]
            cells.append(f"{fpr:.3f} / {np.mean(tpr):.3f}" if tpr else f"{fpr:.3f} / -")
        print(f"| {s} | {d} | " + " | ".join(cells) + " |")


def plot(rows: list[dict], out: Path) -> None:
    """One PNG per (set, detector): histogram of realized FPR per alpha over the exact Beta-Binomial pmf."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    for s, d in sorted({(r["set"], r["detector"]) for r in rows}):
        res = [r for r in rows if r["set"] == s and r["detector"] == d and r["split"].startswith("resplit")]
        off = [r for r in rows if r["set"] == s and r["detector"] == d and r["split"] == "official"]
        fig, axes = plt.subplots(1, len(ALPHAS), figsize=(5 * len(ALPHAS), 3.4))
        for ax, a in zip(axes, ALPHAS):
            n_cal, n_test = int(np.median([r["n_cal"] for r in res])), int(np.median([r["n_test"] for r in res]))
            band = conformal_band(n_cal, n_test, a)
            counts = np.array([r[f"fp@{a}"] for r in res])
            top = int(max(counts.max(), band["hi"] * n_test * 1.3, 3)) + 1
            ax.hist(counts / n_test, bins=np.arange(top + 1) / n_test - 0.5 / n_test, density=False,
                    weights=np.full(len(counts), 1.0 / len(counts)), color="tab:blue", alpha=0.6,
                    label=f"{len(res)} re-splits")
            if band["dist"] is not None:
                ks = np.arange(top + 1)
                ax.plot(ks / n_test, band["dist"].pmf(ks), "k.-", ms=3, lw=0.8, label="exact (Beta-Binomial)")
            ax.axvline(a, color="tab:red", ls="--", lw=1, label=f"alpha={a}")
            ax.axvline(counts.mean() / n_test, color="tab:blue", lw=1.5, label="mean realized")
            if off:
                ax.axvline(off[0][f"fpr@{a}"], color="tab:green", lw=1.5, label="official split")
            ax.set_xlabel("realized false-alarm rate on test normals")
            ax.set_title(f"{s} / {d}: alpha={a}, n_cal={n_cal}, n_test={n_test}", fontsize=8)
            ax.legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(out / f"coverage_{s}_{d}.png".replace("/", "-").replace("+", "-"), dpi=90)
        plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", nargs="*", default=[], help="MVTec-layout folders")
    ap.add_argument("--image-detectors", default="patchcore,padim")
    ap.add_argument("--mix", nargs="*", default=[], help="two MVTec folders: their normals as two products")
    ap.add_argument("--mix-modes", default="pooled,groups,auto")
    ap.add_argument("--tabular", default=None, help="folder of ADBench .npz sets")
    ap.add_argument("--sets", default=",".join(TABULAR_SETS))
    ap.add_argument("--vector-detectors", default="knn,iforest")
    ap.add_argument("--repeats", type=int, default=None, help="re-splits (default 10 images, 50 tables)")
    ap.add_argument("--small", type=int, default=None, help="tables: fit on only this many normal rows")
    ap.add_argument("--max-rows", type=int, default=5000, help="tables: normal rows used per split")
    ap.add_argument("--param", action="append", default=[], help="detector parameter key=value (repeatable)")
    ap.add_argument("--cache", default="/tmp/normalcy-coverage-cache")
    ap.add_argument("--plots", default=str(ROOT / "docs" / "coverage"))
    ap.add_argument("--min-train-share", type=float, default=None,
                    help="calibration.conformal.MIN_TRAIN_SHARE for this run (0: small fits go cross-conformal, "
                    "the behaviour before the stretched hold-out)")
    ap.add_argument("--folds", type=int, default=None,
                    help="calibration.conformal.MIN_HOLDOUT_FOLDS (K of cross-conformal fits) for this run")
    ap.add_argument("--json", default=None, help="rows and summary (rewritten after every image set)")
    ap.add_argument("--first-split", type=int, default=0,
                    help="images: continue an earlier run from this re-split (its seeds; no official split)")
    ap.add_argument("--tpr-splits", type=int, default=None,
                    help="images: score defects (recall) only in the first N splits (default all)")
    ap.add_argument("--from-json", nargs="*", default=[], help="only summarize rows saved by earlier runs")
    args = ap.parse_args(argv)
    if args.from_json:
        rows = [r for f in args.from_json for r in json.loads(Path(f).read_text())["rows"]]
        summary = summarize(rows)
        print_table(summary)
        print_fold_table(summary)
        print_alpha_table(rows)
        if args.plots:
            plot(rows, Path(args.plots))
        return
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if args.min_train_share is not None:
        from normalcy.calibration import conformal

        conformal.MIN_TRAIN_SHARE = args.min_train_share
    if args.folds is not None:
        from normalcy.calibration import conformal

        conformal.MIN_HOLDOUT_FOLDS = args.folds
    params = {k: json.loads(v) for k, v in (p.split("=", 1) for p in args.param)}
    rows: list[dict] = []
    for folder in args.images:
        for name in args.image_detectors.split(","):
            print(f"{Path(folder).name} / {name}", flush=True)
            rows += run_images(Path(folder), name, args.repeats or 10, Path(args.cache), params,
                               first=args.first_split, tpr_splits=args.tpr_splits)
            if args.json:  # kept as the run goes: a long run stopped early still leaves its splits
                Path(args.json).write_text(json.dumps({"rows": rows}, indent=1))
    if args.mix:
        for name in args.image_detectors.split(","):
            rows += run_mix([Path(m) for m in args.mix], name, args.repeats or 10, Path(args.cache), params,
                            args.mix_modes.split(","))
    if args.tabular:
        for s in args.sets.split(","):
            for name in args.vector_detectors.split(","):
                rows += run_tabular(Path(args.tabular) / f"{s}.npz", name, args.repeats or 50, args.small,
                                    args.max_rows, params)
    summary = summarize(rows)
    print_table(summary)
    print_fold_table(summary)
    print_alpha_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "summary": summary}, indent=1))
    if args.plots and rows:
        plot(rows, Path(args.plots))


if __name__ == "__main__":
    main()
