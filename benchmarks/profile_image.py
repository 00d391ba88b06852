"""Where each millisecond of image `fit` and `predict` goes, stage by stage, on a real MVTec-layout set.

The real code runs unchanged; the stage functions are wrapped with timers (exclusive time: a stage nested in
another is not counted twice). `predict` is the path of `normalcy predict`: read → score → decide → regions →
overlay/mask PNGs → results rows (`apps.results.predict_to_folder`), one image per call (batch 1), beside a
backbone-only pass on the same images, interleaved, so the ratio holds on a noisy machine. Prints markdown.

    OMP_NUM_THREADS=1 python benchmarks/profile_image.py ../shared/data/magnetic_tile [--detector patchcore,padim]
        [--images 30] [--threads 1] [--model-dir DIR]   # DIR: reuse/keep fitted models (fit is profiled once)
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

STAGE_ORDER = ("decode", "gain normalization", "resize/canvas", "backbone", "aggregation", "standardize", "search",
               "positional term", "upsampling", "blur", "calibration", "regions", "overlay drawing", "PNG encoding",
               "writing results", "coreset", "channel stats", "position gaussian", "ivf lists", "pixel quantiles")


class StageTimer:
    """Exclusive CPU time per stage name, per thread: time inside a nested timed stage counts for that stage only.

    CPU time of the running thread, not wall time: on a shared machine wall time mostly measures the neighbours;
    a stage run in a background thread (PNG encoding) is counted in that thread.
    """

    def __init__(self, clock: Callable[[], float] = time.thread_time) -> None:
        self.total: dict[str, float] = defaultdict(float)
        self.clock = clock
        self._local = threading.local()  # per thread: a stack of [start, time of timed children]
        self._lock = threading.Lock()
        self.enabled = True

    def wrap(self, name: str, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if not self.enabled:
                return fn(*args, **kwargs)
            stack = self._local.__dict__.setdefault("stack", [])
            frame = [self.clock(), 0.0]
            stack.append(frame)
            try:
                return fn(*args, **kwargs)
            finally:
                spent = self.clock() - frame[0]
                stack.pop()
                with self._lock:
                    self.total[name] += spent - frame[1]
                if stack:
                    stack[-1][1] += spent
        timed.__wrapped_stage__ = fn  # type: ignore[attr-defined]
        return timed

    def reset(self) -> None:
        self.total.clear()


@contextmanager
def patched(timer: StageTimer, targets: list[tuple[Any, str, str]]) -> Iterator[None]:
    """Replace each (owner, attribute) by a timed wrapper named `stage`; restore everything on exit."""
    saved = []
    for owner, attr, stage in targets:
        if not hasattr(owner, attr):
            continue
        own = vars(owner)
        saved.append((owner, attr, own[attr] if attr in own else None))
        setattr(owner, attr, timer.wrap(stage, getattr(owner, attr)))
    try:
        yield
    finally:
        for owner, attr, fn in reversed(saved):
            if fn is None:
                delattr(owner, attr)  # it was inherited (or a bound method): uncover the original
            else:
                setattr(owner, attr, fn)


def stage_targets() -> list[tuple[Any, str, str]]:
    """Every function that makes up a stage, where the pipeline looks it up at call time."""
    import PIL.Image

    import normalcy.data as data
    import normalcy.features.preprocess as pre
    from normalcy.apps import results
    from normalcy.calibration import conformal, fitting
    from normalcy.detectors import base
    from normalcy.detectors.image import bank, common, intensity, padim, patchcore, search
    from normalcy.explain import overlay, summary
    from normalcy.features.extractor import PatchFeatureExtractor
    from normalcy.features.standardize import ChannelStats

    out = [(data, "read_image", "decode"), (data, "as_rgb_array", "decode"),
           (intensity, "gain_normalize", "gain normalization"),  # PatchCore's default intensity="gain"
           (common, "prepare_batch", "resize/canvas"), (pre, "prepare_batch", "resize/canvas"),
           (PatchFeatureExtractor, "__call__", "aggregation"),
           (ChannelStats, "apply", "standardize"), (ChannelStats, "fit", "channel stats"),
           (search, "nearest_neighbors", "search"), (patchcore, "nearest_neighbors", "search"),
           (patchcore, "streamed_nearest", "search"), (bank, "streamed_nearest", "search"),
           (search.IVFIndex, "search", "search"), (search, "greedy_coreset", "coreset"),
           (patchcore, "greedy_coreset", "coreset"), (patchcore, "train_lists", "ivf lists"),
           (patchcore, "position_distances", "positional term"), (padim, "position_distances", "positional term"),
           (patchcore, "fit_position_gaussian", "position gaussian"),
           (padim, "fit_position_gaussian", "position gaussian"),
           (common, "restore_maps", "upsampling"), (pre, "gaussian_blur", "blur"),
           (base.Detector, "decide", "calibration"), (fitting, "decisions", "calibration"),
           (conformal, "pixel_quantiles", "pixel quantiles"), (base, "pixel_quantiles", "pixel quantiles"),
           (fitting, "pixel_quantiles", "pixel quantiles"),
           (results, "attach_all", "regions"), (summary, "attach_all", "regions"),
           (overlay, "overlay", "overlay drawing"), (overlay, "mask_image", "overlay drawing"),
           (PIL.Image.Image, "save", "PNG encoding"), (results.ResultWriter, "_write_row", "writing results")]
    for mod in (patchcore, padim, search):  # the batched predict path, when present
        for name in ("batch_restore_maps",):
            if hasattr(mod, name):
                out.append((mod, name, "upsampling"))
    return out


def backbone_targets(det: Any, timer: StageTimer) -> list[tuple[Any, str, str]]:
    """The backbone forward of this detector's extractor (an instance attribute, so patched on the net)."""
    return [(det.extractor.net, "forward_features", "backbone")]


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    line = lambda cells: "| " + " | ".join(cells) + " |"  # noqa: E731
    return "\n".join([line(header), line(["---"] + ["---:"] * (len(header) - 1)), *map(line, rows)])


def stage_rows(per_image: list[dict[str, float]], total_ms: list[float]) -> list[list[str]]:
    """Median ms per image of each stage, its share of the median total, and an 'other' row (untimed glue)."""
    names = [s for s in STAGE_ORDER if any(s in d for d in per_image)]
    med_total = statistics.median(total_ms)
    rows, timed = [], 0.0
    for s in names:
        m = statistics.median(d.get(s, 0.0) for d in per_image)
        timed += m
        rows.append([s, f"{m:.1f}", f"{100 * m / med_total:.0f}%"])
    rows.append(["other (glue, untimed)", f"{med_total - timed:.1f}", f"{100 * (med_total - timed) / med_total:.0f}%"])
    rows.append(["**total**", f"**{med_total:.1f}**", "100%"])
    return rows


def ratio(ms: dict[str, list[float]], key: str) -> float:
    """Median over images of (this measure / the same image's backbone pass): robust to a drifting machine."""
    return statistics.median(a / b for a, b in zip(ms[key], ms["backbone_cpu"]))


def parse_params(text: str) -> dict[str, Any]:
    """`backbone=efficientnet_lite0,n_probe=8` → keyword arguments (ints and floats parsed, the rest text)."""
    out: dict[str, Any] = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        for kind in (int, float, str):
            try:
                out[key] = kind(value)
                break
            except ValueError:
                continue
    return out


def fit_model(det_name: str, root: Path, timer: StageTimer, model_path: Path | None,
              params: dict[str, Any] | None = None) -> tuple[Any, dict, float]:
    """Fit the detector on train/good with every stage timed (or load `model_path` when it exists)."""
    import normalcy
    from normalcy.data import load_mvtec
    from normalcy.detectors import create_detector

    if model_path is not None and model_path.is_file():
        return normalcy.load(model_path), {}, float("nan")
    train, _ = load_mvtec(root)
    det = create_detector(det_name, progress=False, **(params or {}))
    det.extractor  # noqa: B018  (built before timing: a one-off model load, not part of fit)
    timer.reset()
    phases = StageTimer()
    targets = stage_targets() + backbone_targets(det, timer)
    cls = type(det)
    phase_targets = [(cls, "_fit", "fit model (features, bank/Gaussians, held-out norms)"),
                     (cls, "_score", "score calibration hold-out")]
    t0, c0 = time.perf_counter(), time.process_time()
    with patched(timer, targets), patched(phases, phase_targets):
        det.fit([s.path for s in train])
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    stages = dict(timer.total)
    stages["__wall__"] = wall
    stages["__phases__"] = dict(phases.total)  # type: ignore[assignment]
    if model_path is not None:
        det.save(model_path)
    return det, stages, cpu


def profile_predict(det: Any, paths: list[Path], timer: StageTimer,
                    write_images: bool = True) -> tuple[list[dict[str, float]], dict[str, list[float]]]:
    """Per image, all CPU ms: the stages of `predict_to_folder` at batch 1 and its total; `det.predict([path])`
    (the library call `normalcy bench` times); a backbone-only pass; and the wall ms of the first."""
    import torch

    from normalcy.apps.results import predict_to_folder
    from normalcy.data import as_rgb_array
    from normalcy.features.preprocess import prepare_batch

    det.progress = False
    per_image: list[dict[str, float]] = []
    ms: dict[str, list[float]] = defaultdict(list)
    with tempfile.TemporaryDirectory() as tmp, patched(timer, stage_targets() + backbone_targets(det, timer)):
        predict_to_folder(det, [paths[0]], Path(tmp) / "warm", write_images=write_images, batch=1)
        for i, p in enumerate(paths):
            timer.reset()
            t0, c0 = time.perf_counter(), time.process_time()
            predict_to_folder(det, [p], Path(tmp) / f"r{i}", write_images=write_images, batch=1)
            ms["cli_cpu"].append(1000 * (time.process_time() - c0))
            ms["cli_wall"].append(1000 * (time.perf_counter() - t0))
            per_image.append({k: 1000 * v for k, v in timer.total.items()})
            timer.enabled = False
            c0 = time.process_time()
            det.predict([p])
            ms["lib_cpu"].append(1000 * (time.process_time() - c0))
            if write_images:  # the command's default since overlays became opt-in (`--images`): no PNGs
                c0 = time.process_time()
                predict_to_folder(det, [p], Path(tmp) / f"n{i}", write_images=False, batch=1)
                ms["cli_plain_cpu"].append(1000 * (time.process_time() - c0))
            x, _ = prepare_batch([as_rgb_array(p)], det.canvas, det.input_mode)
            c0 = time.process_time()
            with torch.inference_mode():
                det.extractor.net.forward_features(x, det.extractor.strides)
            ms["backbone_cpu"].append(1000 * (time.process_time() - c0))
            timer.enabled = True
    return per_image, ms


def set_up_run(root: Path, n_images: int, threads: int, keep_memory: bool = True) -> tuple[list[Path], bool]:
    """What both image benchmarks do first (also benchmarks/throughput.py): torch threads, the allocator setting every
    `normalcy` command uses, and a seeded pick of `n_images` test images. Returns (paths, whether memory is kept)."""
    import numpy as np
    import torch

    from normalcy.apps.memory import keep_freed_memory
    from normalcy.data import load_mvtec

    torch.set_num_threads(threads)
    kept = keep_freed_memory() if keep_memory else False
    _, test = load_mvtec(root)
    pick = np.random.default_rng(0).permutation(len(test))[:n_images]
    return [Path(test[int(i)].path) for i in sorted(pick)], kept


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("root", help="an MVTec-layout category folder (train/good, test/*)")
    ap.add_argument("--detector", default="patchcore,padim", help="comma-separated detector names")
    ap.add_argument("--images", type=int, default=30, help="test images profiled (seeded pick over all test types)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)")
    ap.add_argument("--model-dir", type=Path, help="keep fitted models here and reuse them (skips the fit profile)")
    ap.add_argument("--no-images", action="store_true", help="profile predict without overlay/mask PNGs")
    ap.add_argument("--params", default="", help="detector parameters for the fit, e.g. backbone=efficientnet_lite0")
    ap.add_argument("--no-keep-memory", action="store_true",
                    help="leave the C allocator's defaults (the CLI keeps freed memory: normalcy/apps/memory.py)")
    args = ap.parse_args(argv)

    import torch

    root = Path(args.root)
    paths, kept = set_up_run(root, args.images, args.threads, keep_memory=not args.no_keep_memory)
    load = os.getloadavg()
    print(f"# Profile: {root.name}, {len(paths)} test images, torch threads {torch.get_num_threads()}, "
          f"load average at start {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}, freed memory kept: {kept}\n")
    print(f"command: `python benchmarks/profile_image.py {args.root} --detector {args.detector} --images "
          f"{args.images} --threads {args.threads}{' --no-images' if args.no_images else ''}"
          f"{' --params ' + args.params if args.params else ''}"
          f"{' --no-keep-memory' if args.no_keep_memory else ''}`\n")
    timer = StageTimer()
    for name in args.detector.split(","):
        model_path = None if args.model_dir is None else args.model_dir / f"{root.name}_{name}.normalcy"
        det, fit_stages, fit_wall = fit_model(name, root, timer, model_path, parse_params(args.params))
        per_image, ms = profile_predict(det, paths, timer, write_images=not args.no_images)
        med = {k: statistics.median(v) for k, v in ms.items()}
        print(f"## {name} predict, batch 1 (canvas {det.canvas[0]}×{det.canvas[1]}), CPU ms per image, medians\n")
        print(markdown_table(
            ["measure", "CPU ms", "× backbone (median of per-image ratios)"],
            [["backbone forward alone", f"{med['backbone_cpu']:.1f}", "1.00"],
             ["`det.predict([path])` (library; what `normalcy bench` times)", f"{med['lib_cpu']:.1f}",
              f"**{ratio(ms, 'lib_cpu'):.2f}**"],
             [f"`normalcy predict` path, overlays {'off' if args.no_images else 'on (`--images`)'} (table below)",
              f"{med['cli_cpu']:.1f}", f"**{ratio(ms, 'cli_cpu'):.2f}**"]]
            + ([["`normalcy predict` path, default (no overlays)", f"{med['cli_plain_cpu']:.1f}",
                 f"**{ratio(ms, 'cli_plain_cpu'):.2f}**"]] if "cli_plain_cpu" in ms else [])))
        print(f"\n(wall ms of the `normalcy predict` path: median {med['cli_wall']:.1f}, under the load above)\n")
        print(markdown_table(["stage", "CPU ms/image (median)", "share"], stage_rows(per_image, ms["cli_cpu"])))
        print()
        if fit_stages:
            phases = fit_stages.pop("__phases__")
            wall = fit_stages.pop("__wall__")
            print(f"## {name} fit ({det.n_fit_} images; CPU {fit_wall:.1f} s, wall {wall:.1f} s; calibration "
                  f"{det.calibration_.method}, n={det.calibration_.n})\n")
            rows = [[s, f"{fit_stages[s]:.2f}", f"{100 * fit_stages[s] / fit_wall:.0f}%"]
                    for s in STAGE_ORDER if s in fit_stages]
            other = fit_wall - sum(fit_stages.values())
            rows.append(["other (glue, untimed)", f"{other:.2f}", f"{100 * other / fit_wall:.0f}%"])
            rows.append(["**total**", f"**{fit_wall:.2f}**", "100%"])
            print(markdown_table(["stage", "CPU s", "share"], rows))
            print()
            print(markdown_table(["phase (inclusive)", "CPU s"], [[k, f"{v:.2f}"] for k, v in phases.items()]))
            print()
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
