"""Images per second of image detectors at batch 1/8/16/32, and of the HTTP service under 16 concurrent clients.

For each detector (fitted on the set's train/good, or loaded from --model-dir) the test images are scored with
`predict` in chunks of the batch size, the backbone batch set to match (`batch_size`). Figures: wall images/s
(depends on the machine's load, printed) and CPU ms per image (what one core spends; steadier on a shared
machine). The service figures come from `benchmarks/load_serve.py`, run on the first detector's model with the
set's own test images.

    OMP_NUM_THREADS=1 python benchmarks/throughput.py ../shared/data/magnetic_tile \
        [--detectors patchcore,padim,vae] [--batches 1,8,16,32] [--threads 1,2] [--images 64] [--model-dir DIR]
        [--serve]

With several `--threads` values each detector is measured at each torch thread count (rows `name, N threads`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any


def fitted(name: str, root: Path, model_dir: Path | None, params: dict[str, Any]) -> Any:
    """The detector fitted on root/train/good with its defaults (+ params), reused from model_dir when saved there."""
    import normalcy
    from normalcy.data import load_mvtec
    from normalcy.detectors import create_detector

    path = None if model_dir is None else model_dir / f"{root.name}_{name}.normalcy"
    if path is not None and path.is_file():
        return normalcy.load(path), path
    train, _ = load_mvtec(root)
    det = create_detector(name, progress=False, **params)
    t0 = time.perf_counter()
    det.fit([s.path for s in train])
    print(f"fitted {name} on {len(train)} images in {time.perf_counter() - t0:.0f} s wall", file=sys.stderr)
    if path is not None:
        model_dir.mkdir(parents=True, exist_ok=True)
        det.save(path)
    return det, path


def measure(det: Any, paths: list[str], batch: int, repeats: int = 3) -> tuple[float, float]:
    """(wall images/s, CPU ms per image) of `predict` over `paths` in chunks of `batch`; median of `repeats` runs."""
    det.progress = False
    det.batch_size = batch
    det.predict(paths[:batch])  # warm-up: allocator, caches, lazy imports
    walls, cpus = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        for start in range(0, len(paths), batch):
            det.predict(paths[start : start + batch])
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return len(paths) / statistics.median(walls), 1000 * statistics.median(cpus) / len(paths)


def parse_params(text: str) -> dict[str, dict[str, Any]]:
    """`vae:max_seconds=30,other:key=value` → {"vae": {"max_seconds": 30}, ...} (values parsed as Python numbers)."""
    out: dict[str, dict[str, Any]] = {}
    for item in filter(None, text.split(",")):
        det, _, kv = item.partition(":")
        key, _, value = kv.partition("=")
        try:
            parsed: Any = int(value)
        except ValueError:
            try:
                parsed = float(value)
            except ValueError:
                parsed = value
        out.setdefault(det, {})[key] = parsed
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("root", help="an MVTec-layout category folder (train/good, test/*)")
    ap.add_argument("--detectors", default="patchcore,padim,vae")
    ap.add_argument("--batches", default="1,8,16,32")
    ap.add_argument("--images", type=int, default=64, help="test images scored per measurement (default 64)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per measurement; the median is printed")
    ap.add_argument("--threads", default="1", help="torch thread counts, comma-separated (default 1: the machine "
                    "is shared; on a quiet machine e.g. 1,2)")
    ap.add_argument("--params", default="", help="detector parameters, e.g. vae:max_seconds=60")
    ap.add_argument("--model-dir", type=Path, help="keep fitted models here and reuse them")
    ap.add_argument("--serve", action="store_true", help="also load-test `normalcy serve` with the first model")
    ap.add_argument("--requests", type=int, default=200, help="service requests (default 200)")
    ap.add_argument("--concurrency", type=int, default=16, help="service clients (default 16)")
    ap.add_argument("--no-keep-memory", action="store_true",
                    help="leave the C allocator's defaults (the CLI keeps freed memory: normalcy/apps/memory.py)")
    args = ap.parse_args(argv)

    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from profile_image import set_up_run

    root = Path(args.root)
    thread_counts = [int(t) for t in str(args.threads).split(",")]
    picked, kept = set_up_run(root, args.images, thread_counts[0], keep_memory=not args.no_keep_memory)
    paths = [str(p) for p in picked]
    batches = [int(b) for b in args.batches.split(",")]
    params = parse_params(args.params)
    load = os.getloadavg()
    print(f"# Throughput: {root.name}, {len(paths)} test images, torch threads {args.threads}, "
          f"load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}, {os.cpu_count()} cores, freed memory kept: "
          f"{kept}\n")
    header = ["detector"] + [f"batch {b}: img/s wall (CPU ms/img)" for b in batches]
    rows, first_model = [], None
    for name in args.detectors.split(","):
        det, path = fitted(name, root, args.model_dir, params.get(name, {}))
        first_model = first_model or path
        for threads in thread_counts:
            torch.set_num_threads(threads)
            label = name if len(thread_counts) == 1 else f"{name}, {threads} thread{'s' * (threads > 1)}"
            cells = [label]
            for b in batches:
                ips, cpu_ms = measure(det, paths, b, args.repeats)
                cells.append(f"{ips:.1f} ({cpu_ms:.1f})")
                print(f"{label} batch {b}: {ips:.2f} img/s wall, {cpu_ms:.1f} CPU ms/img", file=sys.stderr, flush=True)
            rows.append(cells)
    print("| " + " | ".join(header) + " |")
    print("| --- " + "| ---: " * len(batches) + "|")
    for cells in rows:
        print("| " + " | ".join(cells) + " |")
    load = os.getloadavg()
    print(f"\nload average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}\n")
    sys.stdout.flush()
    if args.serve:
        if first_model is None:
            raise SystemExit("--serve needs --model-dir (the service loads the model from a file)")
        import load_serve

        print(f"## Service: `normalcy serve` on {first_model.name}, {args.concurrency} concurrent clients\n")
        sys.stdout.flush()
        return load_serve.main([str(first_model), "--requests", str(args.requests), "--concurrency",
                                str(args.concurrency), "--images", *paths[:16]])
    return 0


if __name__ == "__main__":
    sys.exit(main())
