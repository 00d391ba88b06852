"""Wall-clock and CPU time of MuSc zero-shot scoring on a large batch (issue 16 target: 2,000 images < 15 min).

    OMP_NUM_THREADS=1 python benchmarks/musc_timing.py ../shared/data/magnetic_tile --n 2000 [--chunk-size 32]

The batch is every image of the set (train/good and test), repeated in order until `--n` images (MT has 1,344);
repeats cost the same as new images, which is all a timing needs. Prints images, wall seconds, CPU seconds, ms per
image and the machine's load average before and after (the 2 cores are shared: wall time depends on the load).
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from normalcy.data import load_mvtec
from normalcy.detectors import create_detector


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", help="MVTec-layout category folder")
    p.add_argument("--n", type=int, default=2000, help="images in the batch")
    p.add_argument("--chunk-size", type=int, default=None, help="MuSc chunk_size (default: the detector's)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    train, test = load_mvtec(args.data)
    pool = [s.path for s in train + test]
    batch = [pool[i % len(pool)] for i in range(args.n)]
    params = {"progress": False} | ({"chunk_size": args.chunk_size} if args.chunk_size else {})
    det = create_detector("musc", **params).fit()
    load0 = os.getloadavg()
    t0, c0 = time.perf_counter(), time.process_time()
    result = det.score(batch)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"musc: {len(batch)} images ({len(pool)} distinct), chunk_size {det.chunk_size}: wall {wall:.0f} s "
          f"({wall / 60:.1f} min), CPU {cpu:.0f} s, {1000 * wall / len(batch):.0f} ms/image wall, "
          f"{1000 * cpu / len(batch):.0f} ms/image CPU; load average before {load0[0]:.1f}, after "
          f"{os.getloadavg()[0]:.1f}; {len(result.scores)} scores")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
