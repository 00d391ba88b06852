"""Throughput of `normalcy predict`: local (1 and 2 torch threads) against Dask with 1 and 2 local workers.

Usage: OMP_NUM_THREADS=1 python benchmarks/dask_throughput.py ../shared/data/magnetic_tile [--train 100] [--test 200]

Fits PatchCore (defaults) on a seeded subsample of train/good, saves it, then scores the same seeded subsample of
test images with each engine into its own folder (overlays and masks included), all in one run. Wall time covers
the whole call: for `dask` that includes starting the LocalCluster and loading the model in every worker; the
`--scheduler` rows start a LocalCluster first and time only the predict call against its address (model shipping
and loading still included), as with an existing cluster. Checks that
every engine wrote the same rows (paths, statuses, flags) as the first local run, and prints the largest
relative score difference (torch thread counts change float32 summation order).
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from distributed import LocalCluster

from normalcy.apps.distributed import predict_distributed
from normalcy.apps.results import predict_to_folder
from normalcy.data import load_mvtec
from normalcy.detectors.image.patchcore import PatchCore


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in open(out / "results.jsonl")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="?", default="../shared/data/magnetic_tile")
    ap.add_argument("--train", type=int, default=100)
    ap.add_argument("--test", type=int, default=200)
    ap.add_argument("--chunk-size", type=int, default=8)
    args = ap.parse_args()
    train, test = load_mvtec(args.data)
    rng = np.random.default_rng(0)
    train = [train[i] for i in sorted(rng.choice(len(train), min(args.train, len(train)), replace=False))]
    test = [test[i] for i in sorted(rng.choice(len(test), min(args.test, len(test)), replace=False))]
    paths = [str(s.path) for s in test]
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        t0 = time.perf_counter()
        model = PatchCore(progress=False).fit(train).save(tmp_path / "m.normalcy")
        print(f"fitted on {len(train)} train/good images in {time.perf_counter() - t0:.0f} s; "
              f"scoring {len(paths)} test images")
        print("| engine | wall s | images/s | rows | same paths/status/flags as local | max relative score diff |")
        print("|---|---|---|---|---|---|")
        runs = [("local, 1 torch thread", "local", 1), ("local, 2 torch threads", "local", 2),
                ("dask, 1 worker", "dask", 1), ("dask, 2 workers", "dask", 2),
                ("dask --scheduler, 1 running worker", "running", 1),
                ("dask --scheduler, 2 running workers", "running", 2)]
        ref = None
        for label, engine, n in runs:
            out = tmp_path / f"{engine}{n}"
            t0 = time.perf_counter()
            if engine == "local":
                torch.set_num_threads(n)
                n_rows, _ = predict_to_folder(model, paths, out)
            elif engine == "dask":
                torch.set_num_threads(1)
                n_rows, _ = predict_distributed(model, paths, out, workers=n, chunk_size=args.chunk_size)
            else:  # an already running cluster, as with --scheduler: start-up is not part of the timing
                torch.set_num_threads(1)
                with LocalCluster(n_workers=n, threads_per_worker=1, dashboard_address=":0",
                                  silence_logs=logging.ERROR) as cluster:
                    label += f" (cluster start {time.perf_counter() - t0:.0f} s, not counted)"
                    t0 = time.perf_counter()
                    n_rows, _ = predict_distributed(model, paths, out, scheduler=cluster.scheduler_address,
                                                    chunk_size=args.chunk_size)
            wall = time.perf_counter() - t0
            got = rows(out)
            ref = got if ref is None else ref
            same = [(r["path"], r["status"], r["is_anomaly"]) for r in got] == [
                (r["path"], r["status"], r["is_anomaly"]) for r in ref]
            diff = max((abs(a["score"] - b["score"]) / abs(b["score"]) for a, b in zip(got, ref)
                        if a.get("score") is not None), default=0.0)
            print(f"| {label} | {wall:.1f} | {len(paths) / wall:.2f} | {n_rows} | {'yes' if same else 'NO'} | "
                  f"{diff:.1e} |", flush=True)


if __name__ == "__main__":  # the guard matters: Dask's worker processes re-import this file
    main()
