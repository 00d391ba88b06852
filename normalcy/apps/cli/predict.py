"""`normalcy predict`: score inputs with a saved model; write results.csv/jsonl and overlays."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from normalcy.apps.cli.common import EXIT_OK, EXIT_SOME_FAILED, add_explain_options, explain_args


def add_parser(sub: Any) -> None:
    p = sub.add_parser("predict", help="score images with a saved model; write results.csv/jsonl + overlays")
    p.add_argument("model", help="a .normalcy model file, or a .onnx file from `normalcy export`")
    p.add_argument("inputs", nargs="+", help="image files and/or folders")
    p.add_argument("-o", "--out", required=True, help="output folder")
    p.add_argument("--alpha", type=float, help="target false-alarm rate (default: the model's)")
    p.add_argument("--pixel-fpr", type=float, help="pixel false-positive rate of the defect mask (default 0.001)")
    p.add_argument("--no-images", action="store_true", help="do not write overlay and mask PNGs")
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
    from normalcy.apps.results import predict_to_folder

    if args.engine == "dask":
        return run_on_dask(args)
    model: Any = args.model
    if Path(args.model).suffix.lower() == ".onnx":
        from normalcy.apps.export import load_onnx

        model = load_onnx(args.model, threads=args.threads)
    n_rows, n_failed = predict_to_folder(
        model, args.inputs, Path(args.out), alpha=args.alpha, pixel_fpr=args.pixel_fpr,
        write_images=not args.no_images, **explain_args(args),
    )
    print(f"{n_rows} rows written to {args.out}/results.csv and results.jsonl ({n_failed} failed)")
    return EXIT_SOME_FAILED if n_failed else EXIT_OK


def run_on_dask(args: argparse.Namespace) -> int:
    """`predict --engine dask`: the same rows and images, scored on a Dask cluster (docs/scale.md)."""
    from normalcy.apps.distributed import predict_distributed
    from normalcy.errors import ParameterError

    if getattr(args, "gallery", None) or getattr(args, "narrator_url", None):
        raise ParameterError("--gallery and --narrator-url are not supported with --engine dask; use --engine local")
    if Path(args.model).suffix.lower() == ".onnx":
        raise ParameterError("--engine dask scores .normalcy models; run ONNX models with --engine local")
    n_rows, n_failed = predict_distributed(
        args.model, args.inputs, Path(args.out), alpha=args.alpha, pixel_fpr=args.pixel_fpr,
        write_images=not args.no_images, scheduler=args.scheduler, workers=args.workers, chunk_size=args.chunk_size,
        connect_timeout=args.connect_timeout,
    )
    print(f"{n_rows} rows written to {args.out}/results.csv and results.jsonl ({n_failed} failed)")
    return EXIT_SOME_FAILED if n_failed else EXIT_OK
