"""Do detector scores grow with defect severity? Spearman(level, score) on synthesized defects, levels 1..L.

python benchmarks/severity.py ../shared/data/magnetic_tile [--out /tmp/severity] [--n 100] [--levels 5]
    [--detectors patchcore,padim,gaussian] [--train 150] [--bases 100] [--json results.json]

Builds an MVTec-layout folder: train/good = links to a seeded subsample of the category's train/good; defects =
`normalcy synth --severity-levels L` (Perlin, cut-paste, transplants of the category's real test defects) on a
seeded subsample of test/good (never seen in training), plus those bases untouched as test/good; then fits each
detector on train/good and reports the Spearman fields `normalcy bench` adds
(`normalcy.calibration.severity.severity_fields`),
overall and per kind (`normalcy bench <out>/category` prints the same overall fields in its JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from normalcy import metrics
from normalcy.apps.bench.images import json_ready
from normalcy.calibration.severity import severity_fields
from normalcy.data import list_images, load_mvtec
from normalcy.detectors import create_detector
from normalcy.synth.folders import synthesize


def link_subsample(src: Path, dst: Path, n: int, seed: int) -> None:
    """Symlink a seeded subsample of `n` images of `src` into `dst`."""
    dst.mkdir(parents=True, exist_ok=True)
    images = list_images(src)
    for i in sorted(np.random.default_rng(seed).permutation(len(images))[:n]):
        target = dst / images[i].name
        if not target.exists():
            os.symlink(images[i].resolve(), target)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root")
    ap.add_argument("--out", default="/tmp/normalcy-severity")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--levels", type=int, default=5)
    ap.add_argument("--detectors", default="patchcore,padim,gaussian")
    ap.add_argument("--train", type=int, default=150)
    ap.add_argument("--bases", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json")
    args = ap.parse_args()
    root, out = Path(args.root), Path(args.out)
    t0 = time.perf_counter()
    link_subsample(root / "test" / "good", out / "bases", args.bases, args.seed)
    cat = out / "category"
    counts = synthesize(out / "bases", cat, n=args.n, defect_dir=root, seed=args.seed,
                        severity_levels=args.levels, train_fraction=0.0)
    link_subsample(root / "train" / "good", cat / "train" / "good", args.train, args.seed)
    print(f"[severity] synthesized {counts} in {time.perf_counter() - t0:.0f} s", flush=True)
    train, test = load_mvtec(cat)
    kinds = sorted({t.defect_type for t in test if t.label == 1})
    rows = []
    for name in args.detectors.split(","):
        # alpha=0.05: 20% of 150 fit images is enough to calibrate, so no detector needs 5-fold cross-fitting
        det = create_detector(name, alpha=0.05, progress=False)
        det.fit(train)
        scores = det.score(test).scores
        pvals = det.calibration_.p_values(scores)
        labels = np.array([t.label for t in test])
        row = {"detector": name, "image_auroc": metrics.auroc(labels, scores),
               **severity_fields(cat, test, scores, pvals)}  # the same fields `normalcy bench` adds
        for kind in kinds:
            idx = [i for i, t in enumerate(test) if t.defect_type == kind]
            sub = severity_fields(cat, [test[i] for i in idx], scores[idx])
            row[f"spearman_{kind}"] = sub["severity_spearman"]
            row[f"pvalue_{kind}"] = sub["severity_spearman_pvalue"]
        rows.append(row)
        print(row, flush=True)
    head = " | ".join(f"ρ {k} (p)" for k in kinds)
    print(f"\n| detector | image AUROC (synthetic vs good) | Spearman(level, score) | p | "
          f"Spearman(level, −conformal p) | p | n | {head} |\n|" + "---|" * (7 + len(kinds)))
    for r in rows:
        per_kind = " | ".join(f"{r[f'spearman_{k}']:.3f} ({r[f'pvalue_{k}']:.2g})" for k in kinds)
        print(f"| {r['detector']} | {r['image_auroc']:.3f} | {r['severity_spearman']:.3f} | "
              f"{r['severity_spearman_pvalue']:.2g} | {r['severity_spearman_conformal']:.3f} | "
              f"{r['severity_spearman_conformal_pvalue']:.2g} | {r['severity_n']} | {per_kind} |")
    print(f"[severity] total {time.perf_counter() - t0:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": json_ready(rows), "args": vars(args)}, indent=2))


if __name__ == "__main__":
    main()
