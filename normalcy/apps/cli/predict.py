"""`normalcy predict`: score inputs with a saved model; write results.csv/jsonl and overlays."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from normalcy.apps.cli.common import (
    EXIT_OK,
    EXIT_SOME_FAILED,
    add_explain_options,
    ensure_writable,
    explain_args,
)

MAX_LISTED_FAILURES = 10  # failed inputs printed one per line; the rest are counted (all are in results.csv)


def add_parser(sub: Any) -> None:
    p = sub.add_parser("predict", help="score images with a saved model; write results.csv/jsonl (+ overlays "
                       "with --images)")
    p.add_argument("model", help="a .normalcy model file, or a .onnx file from `normalcy export`")
    p.add_argument("inputs", nargs="+", help="image files and/or folders")
    p.add_argument("-o", "--out", required=True, help="output folder")
    p.add_argument("--alpha", type=float, help="target false-alarm rate (default: the model's)")
    p.add_argument("--pixel-fpr", type=float, help="pixel false-positive rate of the defect mask (default 0.001)")
    pictures = p.add_mutually_exclusive_group()
    pictures.add_argument("--images", action="store_true", help="also write each image's overlay and mask PNGs "
                          "(off by default: drawing and encoding them add 35–50%% to the CPU time per image, "
                          "docs/performance.md; on with --narrator-url, which needs them)")
    pictures.add_argument("--no-images", action="store_true", help="no overlay and mask PNGs (the default for "
                          "images, kept for scripts; video inputs: no segment strips)")
    p.add_argument("--refine", action="store_true", help="images near alpha get a second, closer look (tiles at "
                   "higher resolution; needs a model fitted with --refine; docs/calibration.md)")
    p.add_argument("--groups", help="each image's calibration group, for a model fitted with groups: 'subfolders' "
                   "(the folder holding the image) or a CSV with columns path,group (default: the nearest group)")
    p.add_argument("--max-megapixels", type=float, default=40.0,
                   help="largest image read, in megapixels; larger ones become error rows (default 40)")
    p.add_argument("--batch-megapixels", type=float, default=160.0,
                   help="decoded megapixels held at once per batch, bounding memory (default 160)")
    add_explain_options(p)
    p.add_argument("--engine", choices=("local", "dask"), default="local",
                   help="where to score: this process, or a Dask cluster (needs normalcy[dask]; docs/scale.md)")
    p.add_argument("--scheduler", help="dask: address of an existing scheduler, e.g. tcp://host:8786 "
                   "(default: start a local cluster)")
    p.add_argument("--workers", type=int, default=2, help="dask: local worker processes when no --scheduler (2)")
    p.add_argument("--chunk-size", type=int, default=8, help="dask: images per task (default 8)")
    p.add_argument("--connect-timeout", type=float, default=10.0,
                   help="dask: seconds to reach --scheduler before giving up (default 10)")


def run(args: argparse.Namespace) -> int:
    from normalcy.apps.results import check_inputs, predict_to_folder

    check_inputs(args.inputs)  # '' would mean the current folder: refused before anything is created
    ensure_writable(args.out, folder=True)
    if args.engine == "dask":
        return run_on_dask(args)
    model: Any = args.model
    if Path(args.model).suffix.lower() != ".onnx":
        from normalcy.apps.cli.modalities import is_modality_model, predict_rows, write_results
        from normalcy.store import load

        model = load(args.model)
        if getattr(args, "groups", None) and (getattr(model, "kind", "") == "video" or is_modality_model(model)):
            from normalcy.errors import ParameterError

            raise ParameterError("--groups applies to image models; for tables pass groups from Python "
                                 "(predict(X, groups=...))")
        if getattr(model, "kind", "") == "video":  # per-frame rows + segment strips: normalcy/apps/cli/video.py
            from normalcy.apps.cli.video import predict_video

            return predict_video(model, args)
        if is_modality_model(model):  # tables, texts, series: one row per input row / line / timestamp
            n_rows, n_failed = write_results(predict_rows(model, args.inputs, alpha=args.alpha), Path(args.out))
            report_run(Path(args.out), n_rows, n_failed)
            return EXIT_SOME_FAILED if n_failed else EXIT_OK
    if Path(args.model).suffix.lower() == ".onnx":
        from normalcy.apps.export import load_onnx

        if getattr(args, "groups", None):
            from normalcy.errors import ParameterError

            raise ParameterError("--groups needs a .normalcy model (ONNX files keep one calibration pool)")
        model = load_onnx(args.model, threads=args.threads)
    groups = None
    if getattr(args, "groups", None):  # stated per image instead of the nearest group centre
        from normalcy.apps.results import expand_paths
        from normalcy.calibration.groups import given_groups

        paths = [p for p, err in expand_paths(args.inputs) if err is None]
        groups = given_groups(args.groups, paths, sorted(model.calibration_.groups))
    if getattr(args, "refine", False):  # every predict call takes the second look (detectors/image/refine.py)
        from normalcy.detectors.image.refine import Refined

        model = Refined(model)
    n_rows, n_failed = predict_to_folder(
        model, args.inputs, Path(args.out), alpha=args.alpha, pixel_fpr=args.pixel_fpr,
        write_images=wants_images(args), max_megapixels=args.max_megapixels,
        batch_megapixels=args.batch_megapixels, **explain_args(args), **({} if groups is None else {"groups": groups}),
    )
    report_run(Path(args.out), n_rows, n_failed)
    return EXIT_SOME_FAILED if n_failed else EXIT_OK


def wants_images(args: argparse.Namespace) -> bool:
    """Overlay and mask PNGs only when asked (`--images`), or when the narrator needs them (not with --no-images)."""
    if getattr(args, "no_images", False):
        return False
    return bool(getattr(args, "images", False) or getattr(args, "narrator_url", None))


def report_run(out: Path, n_rows: int, n_failed: int, max_listed: int = MAX_LISTED_FAILURES) -> None:
    """Each failed input and its reason on stderr (at most `max_listed`, then a count), then one summary line.

    Reads back the rows results.py wrote, so the console says exactly what results.csv/results.jsonl say.
    """
    failed: list[tuple[str, str]] = []
    n_flagged = 0
    rows_file = out / "results.jsonl"
    for line in rows_file.read_text().splitlines() if rows_file.is_file() else []:
        row = json.loads(line)
        if row.get("status") == "error":
            failed.append((row.get("path", "?"), row.get("error") or "unknown error"))
        elif row.get("is_anomaly") is True:
            n_flagged += 1
    for path, reason in failed[:max_listed]:
        print(f"failed: {path}: {reason}", file=sys.stderr)
    if len(failed) > max_listed:
        print(f"... and {len(failed) - max_listed} more failed inputs (status=error rows in {out / 'results.csv'})",
              file=sys.stderr)
    n_scored = n_rows - n_failed
    where = f"{out / 'results.csv'} and {out / 'results.jsonl'}"
    if (out / "overlays").is_dir():
        where += f", overlays in {out / 'overlays'}"
    print(f"{n_scored} scored, {n_flagged} flagged, {n_failed} failed; results in {where}")


def run_on_dask(args: argparse.Namespace) -> int:
    """`predict --engine dask`: the same rows and images, scored on a Dask cluster (docs/scale.md)."""
    from normalcy.apps.distributed import predict_distributed
    from normalcy.errors import ParameterError

    if (getattr(args, "gallery", None) or getattr(args, "narrator_url", None) or getattr(args, "refine", False)
            or getattr(args, "groups", None)):
        raise ParameterError("--gallery, --narrator-url, --refine and --groups are not supported with --engine dask; "
                             "use --engine local")
    if Path(args.model).suffix.lower() == ".onnx":
        raise ParameterError("--engine dask scores .normalcy models; run ONNX models with --engine local")
    n_rows, n_failed = predict_distributed(
        args.model, args.inputs, Path(args.out), alpha=args.alpha, pixel_fpr=args.pixel_fpr,
        write_images=wants_images(args), scheduler=args.scheduler, workers=args.workers, chunk_size=args.chunk_size,
        connect_timeout=args.connect_timeout,
    )
    report_run(Path(args.out), n_rows, n_failed)
    return EXIT_SOME_FAILED if n_failed else EXIT_OK
