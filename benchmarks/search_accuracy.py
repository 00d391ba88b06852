"""Accuracy and cost of PatchCore's bank search variants on one fitted model: exact, and IVF at several n_probe
(its lists searched by the pure-torch loop, `search="ivf"`, and by faiss, `search="auto"` with faiss installed).

The model's bank, Gaussians and fusion norms stay as fitted; the test features are computed once and scored by every
variant, so only the search differs. Prints image AUROC / pixel AUROC / AUPRO and the CPU seconds of scoring.

    OMP_NUM_THREADS=1 python benchmarks/search_accuracy.py MODEL.normalcy ../shared/data/kolektorsdd [--probes 8,4,2]
        [--backends torch,faiss]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", type=Path, help="a fitted PatchCore .normalcy file")
    ap.add_argument("root", type=Path, help="the MVTec-layout set it was fitted on (test/ is scored)")
    ap.add_argument("--probes", default="8,4,2", help="IVF n_probe values to compare with exact search")
    ap.add_argument("--no-exact", action="store_true", help="skip exact search (slow on banks of ~40k rows)")
    ap.add_argument("--backends", default="torch", help="IVF backends: torch (search='ivf'), faiss (search='auto')")
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    import normalcy
    from normalcy import metrics
    from normalcy.apps.bench.images import masks_for
    from normalcy.apps.memory import keep_freed_memory
    from normalcy.data import load_mvtec

    torch.set_num_threads(1)
    keep_freed_memory()
    det = normalcy.load(args.model)
    det.progress = False
    _, test = load_mvtec(args.root)
    labels = np.array([s.label for s in test])
    items = det._cache_features([s.path for s in test])  # features once, for every variant
    bank = det.memory_bank_
    print(f"{args.root.name}: bank {tuple(bank.shape)}, backbone {det.backbone}, {len(test)} test images\n")
    print("| search | image AUROC | pixel AUROC | AUPRO | scoring CPU s |")
    print("|---|---:|---:|---:|---:|")
    ivf = [f"{b}:{p}" for p in args.probes.split(",") for b in args.backends.split(",")]
    for variant in ([] if args.no_exact else ["exact"]) + ivf:
        backend = variant.split(":")[0]
        det.search = {"exact": "exact", "torch": "ivf", "faiss": "auto"}[backend]
        det.n_probe = int(variant.split(":")[1]) if variant != "exact" else det.n_probe
        det._set_bank(bank)
        if backend != "exact" and det._index.backend != backend:
            raise SystemExit(f"asked for the {backend} backend, got {det._index.backend} (is faiss installed?)")
        c0 = time.process_time()
        result = det._score(items)
        cpu = time.process_time() - c0
        img = metrics.image_metrics(labels, result.scores)
        pix = metrics.pixel_metrics(masks_for(test, result.maps), result.maps)
        name = "exact" if variant == "exact" else f"IVF ({backend}), n_probe {variant.split(':')[1]}"
        print(f"| {name} | {img['image_auroc']:.4f} | {pix['pixel_auroc']:.4f} | {pix['aupro']:.4f} | {cpu:.1f} |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
