"""Build the few-shot transfer table (normalcy/calibration/data/fewshot_transfer.json) from auxiliary data.

Usage (the shipped table, rebuilt in docs/fewshot.md's fifth pass; ~7 min on one shared core):
  python benchmarks/fewshot_transfer.py ../shared/data/magnetic_tile --shots 1,4,2,8 --seeds 0,1 --normals 20 \
      --eval-shots 1,4 --eval 40 --stats stats_mt.json --out /tmp/t_mt.json        # and the same for kolektorsdd
  python benchmarks/fewshot_transfer.py --from-stats stats_mt.json,stats_kol.json \
      --out normalcy/calibration/data/fewshot_transfer.json    # prints the leave-one-dataset-out FPR/TPR
(`demo` as a data argument is written first with `normalcy demo`'s generator when missing: tiles and fabric.)

For every category, k in --shots and seed: k references are drawn from train/good (`sample_references`), the
detector is fitted on them (no calibration, no transfer) and `--normals` other train/good images (a fixed seeded
set, never a reference) are scored; the statistic `map_statistic` of each map is one normal sample for k. Test
images are never used, so a dataset's test FPR measured with a table built from the *other* datasets
(leave-one-dataset-out, `--exclude`) is an honest estimate of the transfer.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from normalcy.apps.bench.fewshot import score_cached
from normalcy.calibration.transfer import TransferTable, map_statistic, save_tables
from normalcy.data import find_categories, load_mvtec
from normalcy.detectors import create_detector
from normalcy.detectors.image.fewshot import sample_references


def category_statistics(category: Path, name: str, shots: list[int], seeds: list[int], n_normals: int,
                        params: dict, eval_shots: tuple[int, ...] = (), n_eval: int = 0,
                        checkpoint: Any = None) -> dict[str, dict]:
    """Map statistics of one category per k: held-out train normals ("normal"; the table) and, for k in
    `eval_shots`, up to `n_eval` test/good and `n_eval // 2` defective test images ("test_good", "test_bad")."""
    train, test = load_mvtec(category)
    used = {s.path for k in shots if k <= len(train) - n_normals for seed in seeds
            for s in sample_references(train, k, seed)}
    rest = [s for s in train if s.path not in used]
    rng = np.random.default_rng(0)
    normals = [rest[i] for i in np.sort(rng.choice(len(rest), min(n_normals, len(rest)), replace=False))]
    good = [s for s in test if s.label == 0]
    bad = [s for s in test if s.label == 1]
    good = [good[i] for i in np.sort(rng.choice(len(good), min(n_eval, len(good)), replace=False))]
    bad = [bad[i] for i in np.sort(rng.choice(len(bad), min(n_eval // 2, len(bad)), replace=False))]
    probe = create_detector(name, progress=False, **params)
    cache = list(probe.iter_features(normals, "normals"))
    eval_cache = list(probe.iter_features(good + bad, "test")) if eval_shots and n_eval else []
    out: dict[str, dict] = {"normal": {}, "test_good": {}, "test_bad": {}}
    for k in shots:
        if k > len(train) - len(normals):
            continue
        for seed in seeds:
            det = create_detector(name, progress=False, calibration_fraction=0.0, transfer_table=None, **params)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                det.fit(sample_references(train, k, seed))
            stats = [map_statistic(m, float(det.border)) for m in score_cached(det, cache).maps]
            out["normal"].setdefault(k, []).extend(stats)
            if k in eval_shots and eval_cache:
                z = [map_statistic(m, float(det.border)) for m in score_cached(det, eval_cache).maps]
                out["test_good"].setdefault(k, []).append(z[: len(good)])
                out["test_bad"].setdefault(k, []).append(z[len(good) :])
        print(f"[transfer] {category.name} {name} k={k}: median z {np.median(out['normal'][k]):.2f}", flush=True)
        if checkpoint is not None:
            checkpoint(out)  # partial results survive an interrupted run
    return out


def realized_rates(stats: dict[str, dict[str, dict]], name: str, alphas: tuple[float, ...] = (0.05, 0.01)) -> None:
    """Leave-one-dataset-out: each category's test FPR/TPR with a table built from the other categories only."""
    for target, own in stats.items():
        others = [v["normal"] for c, v in stats.items() if c != target]
        if not others or not own["test_good"]:
            continue
        pooled = {int(k): np.concatenate([o[k] for o in others if k in o]) for k in own["normal"]
                  if any(k in o for o in others)}
        table = TransferTable(name, pooled)
        for k, runs in own["test_good"].items():
            for alpha in alphas:
                fpr = [float((table.p_values(np.array(z), int(k)) <= alpha).mean()) for z in runs]
                tpr = [float((table.p_values(np.array(z), int(k)) <= alpha).mean()) for z in own["test_bad"][k]]
                print(f"[transfer] {target} {name} k={k} alpha={alpha}: realized FPR {np.mean(fpr):.3f} ± "
                      f"{np.std(fpr):.3f}, TPR {np.mean(tpr):.3f} ({len(runs)} seeds, {len(runs[0])} good, "
                      f"{len(own['test_bad'][k][0])} defective; table from {len(others)} other categories)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="*", help="MVTec-layout category folders or roots of categories; 'demo' = synthetic")
    ap.add_argument("--detectors", default="fewshot")
    ap.add_argument("--shots", default="1,2,4,8,16")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--normals", type=int, default=30, help="held-out train normals scored per category")
    ap.add_argument("--out", default="normalcy/calibration/data/fewshot_transfer.json")
    ap.add_argument("--eval-shots", default="", help="k values at which test images are also scored (FPR/TPR)")
    ap.add_argument("--eval", type=int, default=0, help="test/good images scored per category (half as many bad)")
    ap.add_argument("--stats", help="also write every statistic (per category) to this JSON file")
    ap.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                    help="detector parameter (repeatable), e.g. prior=builtin for the fused few-shot table")
    ap.add_argument("--from-stats", help="comma-separated --stats files to merge (no scoring; data is ignored)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from normalcy.apps.cli.common import parse_param

    params = dict(parse_param(p) for p in args.param)
    shots = [int(s) for s in args.shots.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    eval_shots = tuple(int(s) for s in args.eval_shots.split(",") if s)
    cats: list[Path] = []
    for d in args.data if not args.from_stats else []:
        if d == "demo":
            from normalcy.data.synthetic import make_demo_dataset

            root = Path("demo")
            if not root.exists():
                make_demo_dataset(root, seed=0)
            d = str(root)
        cats += find_categories(d)
    t0 = time.time()
    tables = []
    merged: dict[str, dict] = {}
    kept: dict[str, dict] = {}  # statistics of the detectors done, written to --stats
    for f in (args.from_stats or "").split(","):
        if f:
            for det_name, per in json.loads(Path(f).read_text()).items():
                merged.setdefault(det_name, {}).update(per)
    for name in args.detectors.split(","):
        pooled: dict[int, list[float]] = {}
        per_cat = merged.get(name, {})
        for st in per_cat.values():
            for k, v in st["normal"].items():
                pooled.setdefault(int(k), []).extend(v)
        for c in cats if not args.from_stats else []:
            key = f"{c.parent.name}/{c.name}"

            def save(st: dict, key: str = key, name: str = name, done: dict = per_cat) -> None:
                if args.stats:  # every detector's statistics so far, not only this one's
                    Path(args.stats).write_text(json.dumps({**kept, name: {**done, key: st}}))

            st = category_statistics(c, name, shots, seeds, args.normals, params, eval_shots, args.eval, save)
            per_cat[key] = st
            for k, v in st["normal"].items():
                pooled.setdefault(k, []).extend(v)
        realized_rates(per_cat, name)
        kept[name] = per_cat
        if args.stats:
            Path(args.stats).write_text(json.dumps(kept))
        tables.append(TransferTable(name, {k: np.array(v) for k, v in pooled.items()},
                                    {"n_per_k": {str(k): len(v) for k, v in pooled.items()}}))
    command = "python " + " ".join(shlex.quote(",".join(Path(p).name if Path(p).is_absolute() else p
                                                         for p in a.split(","))) for a in sys.argv)
    save_tables(tables, args.out, meta={"command": command, "categories": sorted(per_cat),
                                        "statistic": "map_statistic: (max over centre - median) / MAD",
                                        "seconds": round(time.time() - t0)})
    print(f"[transfer] wrote {args.out} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
