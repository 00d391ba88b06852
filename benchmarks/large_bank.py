"""Large memory banks: recall@1, query time and peak RSS of exact / own IVF / faiss IVF / faiss HNSW search.

Usage: OMP_NUM_THREADS=1 python benchmarks/large_bank.py ../shared/data/magnetic_tile
           [--train 100] [--test 100] [--rows 1000000] [--dim 152] [--queries 1000] [--skip-real] [--skip-synthetic]

Part 1 (real patch features): PatchCore's patch features of a seeded subsample of train/good form the bank (every
patch, no coreset, so the bank is large); the patches of a seeded subsample of test images are the queries. Prints
recall@1 against exact search, query time per 1000 patches, and image/pixel AUROC of the same model with each
search backend. Part 2 (synthetic): a clustered rows × dim float32 bank in a .npy file; each method runs in its own
child process so that its peak RSS is its own, with the bank in memory or memory-mapped from the file.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from normalcy.detectors.image.bank import open_bank, streamed_nearest, write_list_ordered
from normalcy.detectors.image.faiss_index import FaissIndex, faiss_available
from normalcy.detectors.image.search import IVFIndex, nearest_neighbors, train_lists

LIST_SIZE_SYNTHETIC = 1024  # rows per IVF list on the 10^6 bank (977 lists; k-means on 64 rows per list)


def rss_mb() -> dict[str, float]:
    """Peak RSS of this process and its current anonymous / file-backed (page cache of mapped files) RSS, MiB."""
    status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
    kb = lambda key: float(status.get(key, "0 kB").split()[0])  # noqa: E731
    return {"peak_rss_mb": kb("VmHWM") / 1024,  # not ru_maxrss: Linux carries that over from the forking parent
            "rss_anon_mb": kb("RssAnon") / 1024, "rss_file_mb": kb("RssFile") / 1024}


def recall_at_1(dist: torch.Tensor, exact: torch.Tensor) -> float:
    """Share of queries whose returned distance equals the exact nearest distance (ties and row order ignored)."""
    return float((dist <= exact * (1 + 1e-5) + 1e-6).float().mean())


# ---- part 1: real patch features ----------------------------------------------------------------------------
def real_features(data: str, n_train: int, n_test: int, n_queries: int) -> None:
    from normalcy import metrics
    from normalcy.apps.bench.images import masks_for
    from normalcy.data import load_mvtec
    from normalcy.detectors.image.patchcore import PatchCore

    train, test = load_mvtec(data)
    rng = np.random.default_rng(0)
    train = [train[i] for i in sorted(rng.choice(len(train), min(n_train, len(train)), replace=False))]
    test = [test[i] for i in sorted(rng.choice(len(test), min(n_test, len(test)), replace=False))]
    labels = np.array([s.label for s in test])
    t0 = time.perf_counter()
    det = PatchCore(coreset_ratio=1.0, search="exact", calibration_fraction=0.0, progress=False).fit(train)
    cached = det._cache_features(test)
    queries = torch.cat([c.feats.permute(1, 2, 0)[c.valid] for c in cached])
    pick = torch.randperm(queries.shape[0], generator=torch.Generator().manual_seed(0))[:n_queries]
    queries = queries[pick].contiguous()
    exact_d = nearest_neighbors(queries, det.memory_bank_)[0][:, 0]
    print(f"\n## Real patch features: bank {tuple(det.memory_bank_.shape)} from {len(train)} train/good images, "
          f"{queries.shape[0]} query patches from {len(test)} test images ({labels.sum()} defective); "
          f"features {time.perf_counter() - t0:.0f} s")
    print("| search | build s | recall@1 | ms / 1000 patches | image AUROC | pixel AUROC | AUPRO | score s |")
    print("|---|---|---|---|---|---|---|---|")
    modes = ["exact", "ivf"] + (["faiss-ivf", "faiss-hnsw"] if faiss_available() else [])
    for mode in modes:
        det.set_params(search=mode)
        t0 = time.perf_counter()
        det._set_bank(det.memory_bank_)
        build = time.perf_counter() - t0
        t0 = time.perf_counter()
        dist = det._index.search(queries)[0] if det._index is not None else det._nearest(queries)[0][:, 0]
        per_1000 = (time.perf_counter() - t0) * 1000 / queries.shape[0] * 1000
        t0 = time.perf_counter()
        res = det.score(cached)
        score_s = time.perf_counter() - t0
        row = metrics.image_metrics(labels, res.scores)
        row.update(metrics.pixel_metrics(masks_for(test, res.maps), res.maps))
        print(f"| {mode} | {build:.1f} | {recall_at_1(dist, exact_d):.4f} | {per_1000:.0f} | {row['image_auroc']:.4f} "
              f"| {row['pixel_auroc']:.4f} | {row['aupro']:.4f} | {score_s:.0f} |", flush=True)
    if not faiss_available():
        print("(faiss not installed: pip install 'normalcy[faiss]' for the faiss rows)")


# ---- part 2: synthetic bank, one child process per method ----------------------------------------------------
def make_synthetic(folder: Path, rows: int, dim: int, n_queries: int, seed: int = 0) -> None:
    """A clustered bank (4,096 Gaussian clusters) written chunk by chunk, queries from the same mixture."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(4096, dim, generator=gen)
    bank = np.lib.format.open_memmap(folder / "bank.npy", mode="w+", dtype=np.float32, shape=(rows, dim))
    for start in range(0, rows, 65536):
        n = min(65536, rows - start)
        bank[start : start + n] = (centres[torch.randint(0, 4096, (n,), generator=gen)]
                                   + 0.35 * torch.randn(n, dim, generator=gen)).numpy()
    bank.flush()
    del bank
    q = centres[torch.randint(0, 4096, (n_queries,), generator=gen)] + 0.35 * torch.randn(n_queries, dim, generator=gen)
    np.save(folder / "queries.npy", q.numpy())


def child(method: str, folder: Path) -> dict:
    """Run one method in this (fresh) process; returns its figures and writes its distances."""
    queries = torch.from_numpy(np.load(folder / "queries.npy"))
    base = rss_mb()["peak_rss_mb"]
    t0 = time.perf_counter()
    lists = np.load(folder / "lists.npz")
    cent, assign = torch.from_numpy(lists["centroids"]), torch.from_numpy(lists["assign"])
    where, kind = method.split("-", 1) if method.startswith(("memory", "mmap")) else ("mmap", method)
    name = "sorted.npy" if kind in ("ivf", "faiss-ivf") else "bank.npy"
    bank = open_bank(folder / name) if where == "mmap" else torch.from_numpy(np.load(folder / name))
    if kind == "exact":
        search = lambda q: streamed_nearest(q, bank)[0][:, 0]  # noqa: E731
    elif kind == "ivf":
        search = IVFIndex(bank, n_probe=8, centroids=cent, assign=assign).search
    elif kind == "faiss-ivf":
        search = FaissIndex(bank, "ivf", n_probe=8, centroids=cent).search
    else:
        search = FaissIndex(bank, "hnsw").search
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = search(queries)
    dist = out[0] if isinstance(out, tuple) else out
    per_1000 = (time.perf_counter() - t0) * 1000 / queries.shape[0] * 1000
    np.save(folder / f"dist-{method}.npy", dist.numpy())
    return {"method": method, "build_s": build, "ms_per_1000": per_1000, "base_rss_mb": base, **rss_mb()}


def synthetic(rows: int, dim: int, n_queries: int, workdir: str | None, only: list[str]) -> None:
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        make_synthetic(folder, rows, dim, n_queries)
        bank = open_bank(folder / "bank.npy")
        t1 = time.perf_counter()
        k = max(1, rows // LIST_SIZE_SYNTHETIC)
        cent, assign = train_lists(bank, LIST_SIZE_SYNTHETIC, train_rows=64 * k)
        t2 = time.perf_counter()
        sorted_assign, _ = write_list_ordered(folder / "sorted.npy", bank, assign)
        np.savez(folder / "lists.npz", centroids=cent.numpy(), assign=sorted_assign.numpy())
        print(f"\n## Synthetic bank {rows} × {dim} float32 ({rows * dim * 4 / 2**20:.0f} MiB), {n_queries} queries; "
              f"written in {t1 - t0:.0f} s; IVF lists ({k} lists, k-means on {64 * k} rows + streamed assignment) "
              f"{t2 - t1:.0f} s; list-ordered copy {time.perf_counter() - t2:.0f} s")
        print("| method | bank | build s | recall@1 | ms / 1000 queries | peak RSS MiB | RssAnon MiB | RssFile MiB |")
        print("|---|---|---|---|---|---|---|---|")
        methods = ["memory-exact", "mmap-exact", "memory-ivf", "mmap-ivf"]
        methods += ["faiss-ivf", "faiss-hnsw"] if faiss_available() else []
        methods = [m for m in methods if m in only] if only else methods
        methods = methods if methods[0] == "memory-exact" else ["memory-exact", *methods]  # recall's reference
        exact = None
        for method in methods:
            res = subprocess.run([sys.executable, __file__, "--child", method, "--folder", str(folder)],
                                 capture_output=True, text=True, env=os.environ)
            if res.returncode != 0:
                print(f"| {method} | failed: {res.stderr.strip().splitlines()[-1:]} |")
                continue
            r = json.loads(res.stdout.strip().splitlines()[-1])
            dist = torch.from_numpy(np.load(folder / f"dist-{method}.npy"))
            exact = dist if exact is None else exact
            where = "in memory" if method.startswith("memory") else "mmap (faiss copies it)" if "faiss" in method \
                else "mmap"
            print(f"| {method} | {where} | {r['build_s']:.1f} | {recall_at_1(dist, exact):.4f} | "
                  f"{r['ms_per_1000']:.0f} | {r['peak_rss_mb']:.0f} | {r['rss_anon_mb']:.0f} | "
                  f"{r['rss_file_mb']:.0f} |", flush=True)
        print(f"(a child's RSS after importing torch and reading the queries, before the bank: "
              f"~{r['base_rss_mb']:.0f} MiB)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="?", default="../shared/data/magnetic_tile")
    ap.add_argument("--train", type=int, default=100)
    ap.add_argument("--test", type=int, default=100)
    ap.add_argument("--real-queries", type=int, default=10000, help="query patches timed for recall (part 1)")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=152)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--workdir", help="where the synthetic .npy files go (default: the system temp folder)")
    ap.add_argument("--methods", help="synthetic part: comma-separated subset of memory-exact, mmap-exact, "
                    "memory-ivf, mmap-ivf, faiss-ivf, faiss-hnsw (default all)")
    ap.add_argument("--skip-real", action="store_true")
    ap.add_argument("--skip-synthetic", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, Path(args.folder))))
        return
    print(f"torch threads {torch.get_num_threads()}, faiss {'yes' if faiss_available() else 'not installed'}")
    if not args.skip_real:
        real_features(args.data, args.train, args.test, args.real_queries)
    if not args.skip_synthetic:
        only = args.methods.split(",") if args.methods else []
        synthetic(args.rows, args.dim, args.queries, args.workdir, only)


if __name__ == "__main__":
    main()
