"""What the second, closer look (`predict(..., refine=True)`) changes: TPR, realized FPR and predict time (issue 17).

Fits the detector on an MVTec-layout set's train/good plus its refiner, then decides every test image without and
with the second look: coarse scores from backbone features computed once (`--features`, the cache coverage.py
writes), fine scores for the images in the band only (as `predict` does), each in-band rule on the same fine
scores, and the AUROC of the fine and the coarse score inside the band. Time: two `predict` calls (without and
with refine=True) on the same `--time-images` normal + defective decoded images, whose p-values are checked
against the figures. `--bands` re-decides for other bands from fine scores of every test image; `--subsample`
takes a seeded subset of every part (screening only).

Usage:
  python benchmarks/refine.py --data ../shared/data/magnetic_tile --param coreset_ratio=0.01 --alpha 0.05 \
      --time-images 30 --features CACHE.safetensors
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from normalcy.calibration.conformal import exceedances
from normalcy.data import as_rgb_array, load_mvtec
from normalcy.detectors import create_detector
from normalcy.detectors.image.refine import BAND, RULES, fit_refiner


def subsample(items: list, n: int | None, seed: int) -> list:
    """A seeded subset of at most `n` items (all of them when n is None), in their original order."""
    if n is None or n >= len(items):
        return list(items)
    keep = np.sort(np.random.default_rng(seed).choice(len(items), n, replace=False))
    return [items[int(i)] for i in keep]


def _auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """AUROC of scores for labels (nan when one class is missing)."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores)) if 0 < labels.sum() < labels.size else float("nan")


def load_coverage_module():
    """benchmarks/coverage.py, for its feature cache (one cache file serves both benchmarks)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("coverage_bench", Path(__file__).with_name("coverage.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="MVTec-layout category folder")
    ap.add_argument("--detector", default="patchcore")
    ap.add_argument("--alpha", type=float, nargs="+", default=[0.05])
    ap.add_argument("--bands", nargs="*", default=[], help="extra refine bands low,high (multiples of alpha)")
    ap.add_argument("--time-images", type=int, default=40, help="images per class timed end to end (seeded)")
    ap.add_argument("--subsample", type=int, default=None, help="screening: at most this many images per part")
    ap.add_argument("--param", action="append", default=[], help="detector parameter key=value (repeatable)")
    ap.add_argument("--features", default=None, help="backbone feature cache (.safetensors, as coverage.py writes)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    params = {k: json.loads(v) for k, v in (p.split("=", 1) for p in args.param)}
    train, test = load_mvtec(Path(args.data))
    normals, defects = [s for s in test if s.label == 0], [s for s in test if s.label == 1]
    det = create_detector(args.detector, progress=False, **params)
    if args.features:  # coarse features of every image computed once (the order coverage.py uses)
        feats = load_coverage_module().cached_features(det, train + normals + defects, Path(args.features),
                                                       n_canvas=len(train))
        train, normals, defects = (feats[: len(train)], feats[len(train): len(train) + len(normals)],
                                   feats[len(train) + len(normals):])
    train = subsample(train, args.subsample, 0)
    test = subsample(normals, args.subsample, 1) + subsample(defects, args.subsample, 2)
    labels = np.array([getattr(s, "source", s).label for s in test])
    t0 = time.perf_counter()
    det.fit(train)
    t_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    det.refiner_ = fit_refiner(det, train)
    t_refit = time.perf_counter() - t0
    print(f"{Path(args.data).name} / {args.detector} {params}: {len(train)} train, {int((labels == 0).sum())} test "
          f"normals, {int(labels.sum())} defects; n_cal={det.calibration_.n}; fit {t_fit:.0f}s, refine fit "
          f"+{t_refit:.0f}s", flush=True)
    coarse = np.concatenate([det._score(test[s: s + 32]).scores for s in range(0, len(test), 32)])
    ref = det.refiner_
    timed = subsample([i for i in range(len(test)) if labels[i] == 0], args.time_images, 3) + \
        subsample([i for i in range(len(test)) if labels[i] == 1], args.time_images, 4)
    timed_images = [as_rgb_array(getattr(test[i], "source", test[i])) for i in timed]  # decoded once
    rows = []
    for alpha in args.alpha:
        ref.band = BAND
        ref.set_alpha(alpha)
        counts = exceedances(ref.coarse_cal, coarse)
        p0 = (1.0 + counts) / (ref.coarse_cal.size + 1.0)
        todo = np.flatnonzero(ref.in_band(counts))
        fine, _ = ref.fine_scores([as_rgb_array(getattr(test[i], "source", test[i])) for i in todo])
        p1 = p0.copy()
        p1[todo] = ref.p_values(coarse[todo], fine)
        tpr0, fpr0 = float((p0[labels == 1] <= alpha).mean()), float((p0[labels == 0] <= alpha).mean())
        tpr1, fpr1 = float((p1[labels == 1] <= alpha).mean()), float((p1[labels == 0] <= alpha).mean())
        for rule in RULES:  # the same fine scores under each in-band rule (no rescoring)
            ref.rule = rule
            pr = p0.copy()
            pr[todo] = ref.p_values(coarse[todo], fine)
            print(f"   rule {rule!r}: TPR {(pr[labels == 1] <= alpha).mean():.3f}, "
                  f"FPR {(pr[labels == 0] <= alpha).mean():.4f}", flush=True)
        ref.rule = RULES[0]
        band_auc = _auc(fine, labels[todo]), _auc(coarse[todo], labels[todo])
        print(f"   in the band: AUROC of the fine score {band_auc[0]:.3f}, of the coarse score {band_auc[1]:.3f}",
              flush=True)
        t0 = time.perf_counter()
        plain = det.predict(timed_images, alpha=alpha)
        t_plain = time.perf_counter() - t0
        t0 = time.perf_counter()
        refined = det.predict(timed_images, alpha=alpha, refine=True)
        t_ref = time.perf_counter() - t0
        same = all(np.isclose(a.p_value, p1[i]) for a, i in zip(refined, timed))  # predict path == the figures
        row = {"alpha": alpha, "band": list(BAND), "tpr": tpr0, "fpr": fpr0, "tpr_refine": tpr1, "fpr_refine": fpr1,
               "refined_share": todo.size / len(test), "refined_share_normals": float(np.isin(
                   np.flatnonzero(labels == 0), todo).mean()), "refined_share_defects": float(np.isin(
                   np.flatnonzero(labels == 1), todo).mean()),
               "timed_images": len(timed), "predict_s": t_plain, "predict_refine_s": t_ref,
               "time_ratio": t_ref / t_plain, "timed_p_values_match": bool(same),
               "timed_refined": sum("refined:" in p.calibration_note for p in refined), "timed_plain_n": len(plain)}
        rows.append(row)
        print(f"alpha={alpha} band={BAND}: TPR {tpr0:.3f} -> {tpr1:.3f} ({100 * (tpr1 - tpr0):+.1f} points), FPR "
              f"{fpr0:.4f} -> {fpr1:.4f}; refined {todo.size}/{len(test)} ({row['refined_share_normals']:.2f} of "
              f"normals, {row['refined_share_defects']:.2f} of defects); predict on {len(timed)} images "
              f"{t_plain:.1f}s -> {t_ref:.1f}s (x{t_ref / t_plain:.2f}), p-values match: {same}", flush=True)
        if args.bands:
            fine_all, _ = ref.fine_scores([as_rgb_array(getattr(s, "source", s)) for s in test])
            for band in [tuple(float(v) for v in b.split(",")) for b in args.bands]:
                ref.band = band
                ref.set_alpha(alpha)
                sel = np.flatnonzero(ref.in_band(counts))
                p = p0.copy()
                p[sel] = ref.p_values(coarse[sel], fine_all[sel])
                r = {"band": list(band), "alpha": alpha, "refined_share": sel.size / len(test),
                     "tpr": float((p[labels == 1] <= alpha).mean()), "fpr": float((p[labels == 0] <= alpha).mean())}
                rows.append(r)
                print(f"   band {band}: refined {r['refined_share']:.3f}, TPR {r['tpr']:.3f}, FPR {r['fpr']:.4f}",
                      flush=True)
            ref.band = BAND
    if args.json:
        Path(args.json).write_text(json.dumps({"fit_s": t_fit, "refine_fit_s": t_refit, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
