"""IVF search backends side by side: the torch loop against faiss on the same lists, by bank size and query count.

Usage: OMP_NUM_THREADS=1 python benchmarks/ivf_backends.py [--rows 20000,102400] [--queries 1008,2016,4032,10000]
           [--repeats 5]

Clustered synthetic banks (500 Gaussian clusters, 152 dims, PatchCore's feature width), `n_probe=2` (PatchCore's
default); both backends search the same k-means lists, so they find the same entries. Prints the median wall ms
of interleaved calls per (rows, queries): what `search.FAISS_MAX_QUERIES` was chosen from (docs/performance.md).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from normalcy.detectors.image.search import IVFIndex


def clustered(n: int, centers: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """n rows around randomly chosen cluster centres (unit noise)."""
    pick = torch.randint(0, centers.shape[0], (n,), generator=gen)
    return centers[pick] + torch.randn(n, centers.shape[1], generator=gen)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="20000,102400")
    ap.add_argument("--queries", default="1008,2016,4032,10000")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    centers = torch.randn(500, 152, generator=gen) * 3
    queries = [int(q) for q in args.queries.split(",")]
    print("| bank rows | queries | torch ms | faiss ms |\n|---:|---:|---:|---:|")
    for rows in (int(r) for r in args.rows.split(",")):
        bank = clustered(rows, centers, gen)
        q_all = clustered(max(queries), centers, gen)
        both = {name: IVFIndex(bank, n_probe=2, backend=name) for name in ("torch", "faiss")}
        for nq in queries:
            times: dict[str, list[float]] = {"torch": [], "faiss": []}
            for _ in range(args.repeats):
                for name, index in both.items():
                    start = time.perf_counter()
                    index.search(q_all[:nq])
                    times[name].append(time.perf_counter() - start)
            ms = {k: 1e3 * float(np.median(v)) for k, v in times.items()}
            print(f"| {rows} | {nq} | {ms['torch']:.1f} | {ms['faiss']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
