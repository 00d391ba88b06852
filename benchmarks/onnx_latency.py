"""onnxruntime vs torch latency of the same model, batch 1 and batch 16, measured interleaved in one run.

Usage: python benchmarks/onnx_latency.py MODEL.normalcy MODEL.onnx IMAGES_FOLDER [--threads 1] [--repeats 15]
(benchmarks/onnx_parity.py writes such a pair.) Two timings per engine: `score()` end to end on decoded images
(resize, graph, map upsampling + blur: what predict pays) and the graph alone on a preprocessed batch. Runs
alternate torch / onnxruntime so both see the same machine load; the table gives medians in ms per batch.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

import normalcy
from normalcy.apps.export import load_onnx
from normalcy.data import as_rgb_array, list_images
from normalcy.features.preprocess import prepare_batch, valid_grid


def timed(fn: Callable, runs: list[float]) -> None:
    """Time one call of `fn` and append it (ms) to `runs`."""
    t0 = time.perf_counter()
    fn()
    runs.append((time.perf_counter() - t0) * 1e3)


def steps(det, ort_model, images: list[np.ndarray], x: torch.Tensor, v: torch.Tensor) -> dict[str, tuple]:
    """Per step: (torch call, onnxruntime call) doing the same work."""
    out = {"score() end to end": (lambda: det.score(images), lambda: ort_model.score(images))}
    if det.name != "gaussian":  # gaussian pools inside _score: it has no separate torch graph step
        out["graph only"] = (lambda: det._score_features(det.extractor(x), v), lambda: ort_model.run(x, v))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("onnx")
    ap.add_argument("images")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--batches", default="1,16")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    det = normalcy.load(args.model)
    det.progress = False
    ort_model = load_onnx(args.onnx, threads=args.threads)
    paths = sorted(list_images(args.images, recursive=True))
    rng = np.random.default_rng(0)
    size = int(det.image_size)
    print(f"{det.name}, image_size {size}, {args.threads} thread(s) each, {args.repeats} interleaved repeats, "
          f"torch {torch.__version__}")
    print("| batch | step | torch ms | onnxruntime ms | torch / ort |")
    print("|---|---|---|---|---|")
    for batch in (int(b) for b in args.batches.split(",")):
        times: dict[str, tuple[list[float], list[float]]] = {}
        for r in range(args.repeats + 1):  # the first round warms both engines up and is not counted
            pick = [paths[i] for i in rng.choice(len(paths), batch, replace=False)]
            images = [as_rgb_array(p) for p in pick]
            x, placements = prepare_batch(images, size, det.resize_mode)
            v = valid_grid(placements, size, ort_model.grid_)
            for step, (t_call, o_call) in steps(det, ort_model, images, x, v).items():
                t_runs, o_runs = times.setdefault(step, ([], [])) if r else ([], [])
                for call, runs in ([(t_call, t_runs), (o_call, o_runs)][:: 1 if r % 2 else -1]):
                    timed(call, runs)
        for step, (t_runs, o_runs) in times.items():
            mt, mo = statistics.median(t_runs), statistics.median(o_runs)
            print(f"| {batch} | {step} | {mt:.1f} | {mo:.1f} | {mt / mo:.2f} |", flush=True)


if __name__ == "__main__":
    main()
