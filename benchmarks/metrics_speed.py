"""Speed of the pixel metrics on a Magnetic-Tile-shaped test set: 773 maps of 222x103 to 403x632 pixels.

Half of the images get random elliptical defect blobs; maps are float32 noise, higher inside defects.
Prints the median wall and CPU time of `aupro`, `pixel_auroc` and `pixel_metrics` over several repeats.

    python benchmarks/metrics_speed.py [--images 773] [--repeats 5] [--seed 0]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

MIN_SHAPE, MAX_SHAPE = (222, 103), (403, 632)


def random_blob_mask(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """One to three random axis-aligned ellipses, each 2-12% of the image side in radius."""
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    mask = np.zeros(shape, bool)
    for _ in range(int(rng.integers(1, 4))):
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        ry, rx = rng.uniform(0.02, 0.12) * shape[0], rng.uniform(0.02, 0.12) * shape[1]
        mask |= ((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2 <= 1
    return mask


def make_test_set(n_images: int, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Masks (all-False for normal images) and float32 anomaly maps of random sizes."""
    rng = np.random.default_rng(seed)
    masks, maps = [], []
    for i in range(n_images):
        shape = tuple(int(rng.integers(lo, hi + 1)) for lo, hi in zip(MIN_SHAPE, MAX_SHAPE))
        mask = random_blob_mask(rng, shape) if i % 2 else np.zeros(shape, bool)
        amap = rng.random(shape, dtype=np.float32)
        amap[mask] += np.float32(rng.uniform(0.1, 0.6))
        masks.append(mask)
        maps.append(amap)
    return masks, maps


def median_seconds(fn: Callable[[], object], repeats: int) -> tuple[float, float, object]:
    """Median wall and CPU time of fn() over `repeats` calls (CPU time is robust to a busy machine)."""
    wall, cpu, result = [], [], None
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu), result


def main(argv: list[str] | None = None) -> None:
    """Build the synthetic test set, time the metrics, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=773)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    sys.path.append(str(Path(__file__).resolve().parents[1]))  # installed normalcy wins, else this checkout
    from normalcy.metrics import aupro, pixel_auroc, pixel_metrics

    masks, maps = make_test_set(args.images, args.seed)
    n_pixels = sum(m.size for m in maps)
    n_defect = sum(int(m.sum()) for m in masks)
    print(f"{args.images} maps, {n_pixels:,} pixels ({n_defect:,} defect), median of {args.repeats} runs")
    for name, fn in [
        ("aupro", lambda: aupro(masks, maps)),
        ("pixel_auroc", lambda: pixel_auroc(masks, maps)),
        ("pixel_metrics", lambda: pixel_metrics(masks, maps)),
    ]:
        wall, cpu, value = median_seconds(fn, args.repeats)
        print(f"{name:>14}: {wall:7.3f} s wall  {cpu:7.3f} s cpu   value {value}")


if __name__ == "__main__":
    main()
