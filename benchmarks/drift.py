"""Simulated drift: how many images after a brightness or blur shift the drift alarm fires, and that it stays quiet
on unshifted normal images.

Usage: OMP_NUM_THREADS=1 python benchmarks/drift.py [../shared/data/magnetic_tile] [--runs 50] [--budget 0.01]
       [--cache drift-cache.npz]

Fits PatchCore (defaults, 20% of train/good held out for calibration) on train/good, then scores every test/good
image once unshifted and once per shift (brightness gain x1.05/1.10/1.20, Gaussian blur radius 0.5/1/2 px), and
measures each image's mean brightness and sharpness. Scores are cached (`--cache`), so re-runs only simulate.
Each simulated run draws images at random (with replacement) from that pool, as a line would present them:
- null: 2,000 unshifted normal images; counts runs in which the alarm fired (the budget bounds the chance of ever
  firing, so about budget x runs false alarms are expected at most);
- drift: 500 unshifted images, then shifted ones; the delay is the number of images inspected after the change
  (flagged ones included: the monitor only sees images decided normal) until the alarm, capped at 2,000.
Also prints the false-alarm rate the shift causes at the model's alpha: drift should be caught before it moves.

`--compare-fixed` adds why the p-values are computed online (against the calibration scores *and* every earlier
image) rather than against the calibration scores alone: on synthetic Gaussian streams without drift, it counts
false alarms of the same martingale fed fixed-reference p-values, which are not independent given a small reference.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from normalcy import PatchCore
from normalcy.calibration.drift import ConformalMartingale, DriftMonitor, image_statistics
from normalcy.data import load_mvtec, read_image

SHIFTS = {"none": None, "brightness x1.05": ("gain", 1.05), "brightness x1.10": ("gain", 1.10),
          "brightness x1.20": ("gain", 1.20), "blur 0.5 px": ("blur", 0.5), "blur 1 px": ("blur", 1.0),
          "blur 2 px": ("blur", 2.0)}
CHANGE_AT = 500
AFTER = 2000
NULL_LENGTH = 2000


def shifted(img: np.ndarray, shift: tuple[str, float] | None) -> np.ndarray:
    """The image with a brightness gain or a Gaussian blur."""
    if shift is None:
        return img
    kind, amount = shift
    if kind == "gain":
        return np.clip(img.astype(np.float32) * amount, 0, 255).astype(np.uint8)
    return np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(radius=amount)))


def build_cache(data: Path, cache: Path) -> dict[str, np.ndarray]:
    """Fit once, score every test/good image under every shift, keep scores and image statistics."""
    train, test = load_mvtec(data)
    good = [s.path for s in test if s.label == 0]
    t0 = time.perf_counter()
    det = PatchCore(progress=False).fit(train)
    print(f"fit on {len(train)} normal images in {time.perf_counter() - t0:.0f} s; "
          f"calibration n={det.calibration_.n}, alpha={det.alpha}")
    out: dict[str, np.ndarray] = {"calibration": np.asarray(det.calibration_.scores, dtype=np.float64),
                                  "threshold": np.asarray(det.calibration_.threshold(det.alpha)),
                                  "alpha": np.asarray(det.alpha)}
    images = [read_image(p) for p in good]
    for name, shift in SHIFTS.items():
        t0 = time.perf_counter()
        scores, bright, sharp = [], [], []
        for i in range(0, len(images), 32):
            chunk = [shifted(img, shift) for img in images[i:i + 32]]
            scores.extend(det.decision_function(chunk))
            for img in chunk:
                b, s = image_statistics(img)
                bright.append(b)
                sharp.append(s)
        out[f"{name}/score"] = np.asarray(scores, dtype=np.float64)
        out[f"{name}/brightness"] = np.asarray(bright)
        out[f"{name}/sharpness"] = np.asarray(sharp)
        print(f"scored {len(images)} images, shift {name!r}, in {time.perf_counter() - t0:.0f} s")
    np.savez(cache, **out)
    return out


def feed(mon: DriftMonitor, pool: dict[str, np.ndarray], idx: np.ndarray, threshold: float, start: int) -> int | None:
    """Feed images `idx` of a pool (only the ones decided normal reach the monitor); index of the alarm or None."""
    for k, i in enumerate(idx):
        if pool["score"][i] <= threshold:
            mon.update(pool["score"][i], pool["brightness"][i], pool["sharpness"][i])
            if mon.alarm is not None:
                return start + k
    return None


class FixedReference(ConformalMartingale):
    """The same martingale, but every p-value is against the reference only (the new value is not kept)."""

    def update(self, x: float) -> float:
        p = max(self.p_value(float(x)), 1e-300)
        bets = self.epsilons * p ** (self.epsilons - 1.0)
        gain = float(self.weights @ bets)
        self.log_capital += math.log(gain)
        self.weights = (1 - self.jump) * self.weights * bets / gain + self.jump / len(self.weights)
        self.n += 1
        return p


def compare_fixed(budget: float, runs: int, reference_sizes: tuple[int, ...] = (114, 500)) -> None:
    """False alarms over 2,000 drift-free Gaussian values: online p-values against fixed-reference p-values."""
    level = math.log10(1 / budget)
    print("| reference size | online p-values: alarms | fixed reference: alarms | runs | expected at most |\n"
          "| --- | --- | --- | --- | --- |")
    for size in reference_sizes:
        alarms = {"online": 0, "fixed": 0}
        for r in range(runs):
            rng = np.random.default_rng(30_000 + r)
            ref, stream = rng.normal(size=size), rng.normal(size=NULL_LENGTH)
            for name, mart in (("online", ConformalMartingale(ref, seed=r)), ("fixed", FixedReference(ref, seed=r))):
                for x in stream:
                    mart.update(x)
                    if mart.log10_value >= level:
                        alarms[name] += 1
                        break
        print(f"| {size} | {alarms['online']} | {alarms['fixed']} | {runs} | {budget * runs:.2g} |")
    print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="?", default="../shared/data/magnetic_tile")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--budget", type=float, default=0.01)
    ap.add_argument("--cache", type=Path, default=Path("drift-cache.npz"))
    ap.add_argument("--compare-fixed", action="store_true", help="also count false alarms with fixed-reference "
                    "p-values (synthetic streams)")
    args = ap.parse_args()
    if args.compare_fixed:
        compare_fixed(args.budget, args.runs)
    if args.cache.exists():
        cache = dict(np.load(args.cache))
    else:
        if not Path(args.data).is_dir():
            raise SystemExit(f"data folder {args.data} not found (MVTec layout, e.g. ../shared/data/magnetic_tile)")
        cache = build_cache(Path(args.data), args.cache)
    cal, thr, alpha = cache["calibration"], float(cache["threshold"]), float(cache["alpha"])
    pools = {name: {k: cache[f"{name}/{k}"] for k in ("score", "brightness", "sharpness")} for name in SHIFTS}
    n = len(pools["none"]["score"])
    reference = cal[cal <= thr]
    print(f"pool: {n} test/good images; calibration n={len(cal)} ({len(reference)} at or below the alpha={alpha} "
          f"threshold {thr:.4g}); budget {args.budget}, {args.runs} runs per row\n")

    t0 = time.perf_counter()
    false_alarms, first = 0, []
    for r in range(args.runs):
        rng = np.random.default_rng(10_000 + r)
        mon = DriftMonitor(reference, budget=args.budget, seed=r)
        hit = feed(mon, pools["none"], rng.integers(0, n, NULL_LENGTH), thr, 0)
        if hit is not None:
            false_alarms += 1
            first.append(f"{mon.alarm['statistic']}/{mon.alarm['direction']}@{hit}")
    print(f"| stream | runs | alarms | expected at most |\n| --- | --- | --- | --- |\n"
          f"| {NULL_LENGTH} unshifted normal images | {args.runs} | {false_alarms} {' '.join(first)} | "
          f"{args.budget * args.runs:.2g} (budget x runs) |\n")

    base = pools["none"]
    print(f"brightness across images: mean {base['brightness'].mean():.3f}, sd {base['brightness'].std():.3f} "
          f"({base['brightness'].std() / base['brightness'].mean():.0%} of the mean)\n")
    print(f"| shift at image {CHANGE_AT} | mean shift in sd (brightness, sharpness, score) | "
          f"flagged at alpha={alpha} | alarm within {AFTER} | median delay | 90th pct delay | first alarm by |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in SHIFTS:
        if name == "none":
            continue
        pool = pools[name]
        sd = ", ".join(f"{(pool[k].mean() - base[k].mean()) / base[k].std():+.2f}"
                       for k in ("brightness", "sharpness", "score"))
        delays, by, early = [], {}, 0
        for r in range(args.runs):
            rng = np.random.default_rng(20_000 + r)
            mon = DriftMonitor(reference, budget=args.budget, seed=r)
            pre = feed(mon, pools["none"], rng.integers(0, n, CHANGE_AT), thr, 0)
            if pre is not None:  # a false alarm before the change: not a detection
                early += 1
                continue
            hit = feed(mon, pool, rng.integers(0, n, AFTER), thr, CHANGE_AT)
            delays.append(np.inf if hit is None else hit - CHANGE_AT + 1)
            if hit is not None:
                key = f"{mon.alarm['statistic']} {mon.alarm['direction']}"
                by[key] = by.get(key, 0) + 1
        d = np.asarray(delays)
        found = np.isfinite(d)
        med, p90 = (np.quantile(d, q, method="inverted_cdf") if len(d) else np.inf for q in (0.5, 0.9))
        fmt = lambda v: "never" if not np.isfinite(v) else f"{v:.0f}"  # noqa: E731
        flagged = float(np.mean(pool["score"] > thr))
        note = f" ({early} alarmed before the change)" if early else ""
        print(f"| {name} | {sd} | {flagged:.1%} | {found.sum()}/{len(d)}{note} | {fmt(med)} | {fmt(p90)} | "
              f"{', '.join(f'{k} ({v})' for k, v in sorted(by.items(), key=lambda kv: -kv[1]))} |")
    print(f"\nbaseline flagged at alpha={alpha} (unshifted): {np.mean(pools['none']['score'] > thr):.1%}; "
          f"simulation {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
