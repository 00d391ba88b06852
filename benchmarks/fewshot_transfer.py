"""Build the few-shot transfer table (normalcy/calibration/data/fewshot_transfer.json) from auxiliary data.

Usage (the shipped table, rebuilt in docs/fewshot.md's sixth pass; the exact loop is in "Rebuild the table"):
  python benchmarks/fewshot_transfer.py ../shared/data/magnetic_tile --detectors fewshot,dictionary,inp,reference \
      --shots 1,4,2,8 --seeds 0,1 --normals 60 --eval-shots 1,4 --eval 40 --stats stats_mt.json --out /tmp/t_mt.json
      # and the same for ../shared/data/kolektorsdd (stats_kol.json) and demo (stats_demo.json)
  python benchmarks/fewshot_transfer.py --detectors fewshot,dictionary,inp,reference \
      --from-stats stats_mt.json,stats_kol.json,stats_demo.json \
      --out normalcy/calibration/data/fewshot_transfer.json    # prints the leave-one-dataset-out FPR/TPR
(`demo` as a data argument is written first with `normalcy demo`'s generator when missing: tiles and fabric, under
~/.cache/normalcy/zeroshot/demo as `train_zeroshot_head.py --demo` does.)

For every category, k in --shots and seed: k references are drawn from train/good (`sample_references`), the
detector is fitted on them (no calibration, no transfer) and `--normals` other train/good images (a fixed seeded
set, never a reference) are scored; the statistic `map_statistic` of each map is one normal sample for k. Test
images are never used, so a dataset's test FPR measured with a table built from the *other* datasets
(leave-one-dataset-out, printed for every category with test images) is an honest estimate of the transfer.
Each category is one source of the table; `--rule max` (default) decides with the largest per-source p-value,
times `--p-factor` (default 2), see normalcy/calibration/transfer.py; `--rule pool --p-factor 1` is the old rule.
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


def source_table(stats: dict[str, dict[str, dict]], name: str, rule: str, p_factor: float = 1.0) -> TransferTable:
    """The transfer table of categories' normal statistics: one source per category, decided by `rule`."""
    sources = {c: {int(k): np.asarray(v, dtype=np.float64) for k, v in st["normal"].items()}
               for c, st in stats.items()}
    for c, per in sources.items():  # under "max" one small source caps every p-value from below
        small = [k for k, v in per.items() if rule == "max" and v.size + 1 < p_factor / 0.05]
        if small:
            print(f"[transfer] warning: {name} source {c} has too few normals at k={small} to reach alpha 0.05 "
                  f"(needs {p_factor / 0.05 - 1:.0f}); the max rule cannot flag there", flush=True)
    return TransferTable(name, {}, {}, sources, rule, p_factor)


def realized_rates(stats: dict[str, dict[str, dict]], name: str, rule: str = "max", p_factor: float = 1.0,
                   alphas: tuple[float, ...] = (0.05, 0.01)) -> None:
    """Leave-one-dataset-out: each category's test FPR/TPR with a table built from the other categories only."""
    for target, own in stats.items():
        others = {c: v for c, v in stats.items() if c != target}
        if not others or not own["test_good"]:
            continue
        table = source_table(others, name, rule, p_factor)
        for k, runs in own["test_good"].items():
            for alpha in alphas:
                fpr = [float((table.p_values(np.array(z), int(k)) <= alpha).mean()) for z in runs]
                tpr = [float((table.p_values(np.array(z), int(k)) <= alpha).mean()) for z in own["test_bad"][k]]
                print(f"[transfer] {target} {name} k={k} alpha={alpha}: realized FPR {np.mean(fpr):.3f} ± "
                      f"{np.std(fpr):.3f}, TPR {np.mean(tpr):.3f} ({len(runs)} seeds, {len(runs[0])} good, "
                      f"{len(own['test_bad'][k][0])} defective; table from {len(others)} other categories, "
                      f"rule {rule}, p_factor {p_factor:g})")


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
    ap.add_argument("--rule", default="max", choices=["max", "pool"],
                    help="max: largest per-source p-value (default); pool: one p-value from all sources' normals")
    ap.add_argument("--p-factor", type=float, default=2.0,
                    help="safety factor on the p-value (2: each source must give p <= alpha / 2; 1: none)")
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

            root = Path("~/.cache/normalcy/zeroshot/demo").expanduser()  # shared with train_zeroshot_head.py --demo
            if not (root / "fabric").is_dir():
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
        per_cat = merged.get(name, {})
        for c in cats if not args.from_stats else []:
            key = f"{c.parent.name}/{c.name}"

            def save(st: dict, key: str = key, name: str = name, done: dict = per_cat) -> None:
                if args.stats:  # every detector's statistics so far, not only this one's
                    Path(args.stats).write_text(json.dumps({**kept, name: {**done, key: st}}))

            st = category_statistics(c, name, shots, seeds, args.normals, params, eval_shots, args.eval, save)
            per_cat[key] = st
        realized_rates(per_cat, name, args.rule, args.p_factor)
        kept[name] = per_cat
        if args.stats:
            Path(args.stats).write_text(json.dumps(kept))
        table = source_table(per_cat, name, args.rule, args.p_factor)
        table.meta = {"n_per_k": {str(k): int(v.size) for k, v in table.normals.items()}}
        tables.append(table)
    command = "python " + " ".join(shlex.quote(",".join(Path(p).name if Path(p).is_absolute() else p
                                                         for p in a.split(","))) for a in sys.argv)
    save_tables(tables, args.out, meta={"command": command, "categories": sorted(per_cat),
                                        "statistic": "map_statistic: (max over centre - median) / MAD",
                                        "rule": args.rule, "p_factor": args.p_factor,
                                        "seconds": round(time.time() - t0)})
    print(f"[transfer] wrote {args.out} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
