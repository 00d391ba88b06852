"""The `normalcy` command line: thin argument parsing over the Python API."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from normalcy.errors import NormalcyError

EXIT_OK, EXIT_ERROR, EXIT_SOME_FAILED = 0, 2, 3


def parse_param(text: str) -> tuple[str, Any]:
    """`key=value` with the value read as JSON when possible (numbers, lists, true/false/null)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--param expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    if isinstance(value, list):
        value = tuple(value)
    return key.strip().replace("-", "_"), value


def detector_params(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword parameters for a detector from the common options."""
    params = dict(args.param or [])
    for opt in ("image_size", "alpha", "backbone", "weights", "resize_mode"):
        value = getattr(args, opt, None)
        if value is not None:
            params[opt] = value
    return params


def add_detector_options(p: argparse.ArgumentParser, detector_default: str = "patchcore") -> None:
    p.add_argument("--detector", default=detector_default, help="registered detector name(s), comma separated")
    p.add_argument("--image-size", type=int, help="square network input size (default 256)")
    p.add_argument("--resize-mode", choices=("stretch", "pad"), help="how images of other shapes are fitted")
    p.add_argument("--backbone", help="backbone name (default efficientnet_lite0)")
    p.add_argument("--weights", help="local backbone weights file (.pth/.safetensors); never downloaded")
    p.add_argument("--param", action="append", type=parse_param, metavar="KEY=VALUE",
                   help="any other detector parameter, e.g. --param coreset_ratio=0.05 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="normalcy", description="Learn what normal looks like; flag what is not.")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="generate a synthetic inspection set, fit, evaluate, write overlays")
    p.add_argument("-o", "--out", default="normalcy-demo", help="output folder (default ./normalcy-demo)")
    p.add_argument("--detector", default="patchcore")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("fit", help="fit a detector on normal images and save one model file")
    p.add_argument("data", help="an MVTec category folder (uses train/good) or a folder of normal images")
    p.add_argument("-o", "--out", required=True, help="model file to write, e.g. model.normalcy")
    p.add_argument("--alpha", type=float, help="target false-alarm rate stored as the default (0.01)")
    add_detector_options(p)

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

    p = sub.add_parser("export", help="export a model to one ONNX graph with its metadata (needs normalcy[onnx])")
    p.add_argument("model", help="a .normalcy model file (patchcore, padim or gaussian)")
    p.add_argument("-o", "--out", required=True, help="ONNX file to write, e.g. model.onnx")

    p = sub.add_parser("bench", help="fit + evaluate detectors on MVTec-layout folders, print tables")
    p.add_argument("data", help="a category folder or a root of category folders")
    p.add_argument("--json", help="write the results as JSON to this file")
    p.add_argument("--timing-images", type=int, default=20, help="images timed at batch 1 (default 20)")
    p.add_argument("--shots", help="few-shot: numbers of train/good references, e.g. 1,2,4,8 (docs/fewshot.md)")
    p.add_argument("--seeds", help="few-shot: reference-sampling seeds, e.g. 0,1,2 (mean ± std reported)")
    p.add_argument("--multiclass", action="store_true", help="also fit one model on all categories together")
    add_detector_options(p)

    sub.add_parser("bench-vector", help="tables/texts/series benchmark against PyOD (see docs/vector.md)",
                   add_help=False)

    p = sub.add_parser("serve", help="HTTP service + review page for a model (needs normalcy[serve])")
    p.add_argument("model", help="a .normalcy model file, loaded once at start-up")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--max-files", type=int, default=16, help="images per request (default 16)")
    p.add_argument("--max-file-mb", type=float, default=20, help="MiB per uploaded file (default 20)")
    p.add_argument("--max-request-mb", type=float, default=100, help="MiB per request body (default 100)")
    p.add_argument("--max-megapixels", type=float, default=40, help="megapixels per image (default 40)")
    p.add_argument("--queue-size", type=int, default=16, help="requests waiting before 503 (default 16)")
    p.add_argument("--workers", type=int, default=1, help="inference threads (default 1)")
    add_discover_parser(sub)
    add_synth_parser(sub)
    return parser


def add_explain_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gallery", help="folder of labelled defects (type-named subfolders or an MVTec category): "
                                     "name the nearest known defect type of each region")
    p.add_argument("--narrator-url", help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8080/v1: ask it to "
                                          "describe each flagged image (optional; failures are recorded)")
    p.add_argument("--narrator-model", help="model name sent to the narrator endpoint")
    p.add_argument("--narrator-timeout", type=float, default=30.0, help="seconds per narrator call (default 30)")


def add_discover_parser(sub: Any) -> None:
    p = sub.add_parser("discover", help="cluster the anomalous regions of flagged images into defect types")
    p.add_argument("data", help="an MVTec category (test images, scored against true types) or a folder of images")
    p.add_argument("--model", help="a .normalcy model (default: fit PatchCore on DATA/train/good)")
    p.add_argument("--json", required=True, help="write the report (k, nmi, ari, accuracy, assignments) here")
    p.add_argument("-o", "--out", required=True, help="folder for one contact sheet PNG per cluster")
    p.add_argument("--k", type=int, help="number of clusters (default: chosen by silhouette over 2..10)")
    p.add_argument("--alpha", type=float, help="false-alarm rate that decides which images are flagged")
    p.add_argument("--pixel-fpr", type=float, help="pixel false-positive rate of the region masks (default 0.001)")
    p.add_argument("--fit-images", type=int, default=150,
                   help="without --model: seeded subsample of train/good to fit on (0 = all; default 150)")
    p.add_argument("--image-size", type=int, help="without --model: network input size (default 256)")
    p.add_argument("--seed", type=int, default=0)


def add_synth_parser(sub: Any) -> None:
    p = sub.add_parser("synth", help="write synthetic anomalies + masks in MVTec layout (docs/synth.md)")
    p.add_argument("normal_dir", help="folder of normal images (e.g. a category's train/good)")
    p.add_argument("-o", "--out", required=True, help="output category folder (train/, test/, ground_truth/)")
    p.add_argument("--n", type=int, default=200, help="number of synthetic anomalies (default 200)")
    p.add_argument("--from-defects", help="real defects to transplant: MVTec layout or X.png + X_mask.png pairs")
    p.add_argument("--kinds", help="comma-separated: perlin,cutpaste,transplant (default: all that apply)")
    p.add_argument("--severity-levels", type=int, default=0,
                   help="grade size/contrast in levels 1..L and write severity.csv for `normalcy bench`")
    p.add_argument("--train-fraction", type=float, default=0.5,
                   help="share of the normal images linked to train/good, never used as bases (default 0.5)")
    p.add_argument("--blend", choices=("feather", "poisson"), default="feather", help="transplant blending")
    p.add_argument("--seed", type=int, default=0)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench-vector":
        from normalcy.bench.vector import main as vector_main

        return vector_main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        return COMMANDS[args.command](args)
    except NormalcyError as exc:
        print(f"normalcy: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("normalcy: interrupted", file=sys.stderr)
        return 130


def cmd_demo(args: argparse.Namespace) -> int:
    from normalcy.demo import run_demo

    run_demo(Path(args.out), detector=args.detector, seed=args.seed)
    return EXIT_OK


def normal_images_of(data: Path) -> list:
    """The normal training images of `data`: `train/good` of one MVTec category, else the folder's images."""
    from normalcy.data import find_categories, load_folder
    from normalcy.errors import LayoutError, PathNotFoundError

    if not data.exists():
        raise PathNotFoundError(f"{data} does not exist")
    if (data / "train" / "good").is_dir():
        return load_folder(data / "train" / "good")
    try:
        cats = find_categories(data)
    except LayoutError:
        return load_folder(data)
    raise LayoutError(f"{data} holds {len(cats)} categories ({', '.join(c.name for c in cats[:5])}…); "
                      "fit one category folder at a time")


def cmd_fit(args: argparse.Namespace) -> int:
    from normalcy.detectors import create_detector

    data = Path(args.data)
    train = normal_images_of(data)
    det = create_detector(args.detector, **detector_params(args))
    print(f"fitting {args.detector} on {len(train)} normal images from {data}")
    det.fit(train)
    path = det.save(args.out)
    cal = det.calibration_
    print(f"saved {path} (calibration: {cal.method}, {cal.n} normal scores; alpha={det.alpha})")
    return EXIT_OK


def cmd_predict(args: argparse.Namespace) -> int:
    from normalcy.predict_io import predict_to_folder

    if args.engine == "dask":
        return predict_on_dask(args)
    model: Any = args.model
    if Path(args.model).suffix.lower() == ".onnx":
        from normalcy.export import load_onnx

        model = load_onnx(args.model, threads=args.threads)
    n_rows, n_failed = predict_to_folder(
        model, args.inputs, Path(args.out), alpha=args.alpha, pixel_fpr=args.pixel_fpr,
        write_images=not args.no_images, **explain_args(args),
    )
    print(f"{n_rows} rows written to {args.out}/results.csv and results.jsonl ({n_failed} failed)")
    return EXIT_SOME_FAILED if n_failed else EXIT_OK


def predict_on_dask(args: argparse.Namespace) -> int:
    """`predict --engine dask`: the same rows and images, scored on a Dask cluster (docs/scale.md)."""
    from normalcy.distributed import predict_distributed
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


def explain_args(args: argparse.Namespace) -> dict[str, Any]:
    """The gallery folder and narrator client asked for on the command line (both optional)."""
    from normalcy.narrator import Narrator

    out: dict[str, Any] = {}
    if args.gallery:
        out["gallery"] = args.gallery
    if args.narrator_url:
        out["narrator"] = Narrator(args.narrator_url, args.narrator_model or "", timeout=args.narrator_timeout)
    return out


def cmd_discover(args: argparse.Namespace) -> int:
    from normalcy.discover import discover, write_report

    report = discover(args.data, args.out, model=args.model, k=args.k, alpha=args.alpha, pixel_fpr=args.pixel_fpr,
                      n_fit=args.fit_images, seed=args.seed,
                      detector_params={"image_size": args.image_size} if args.image_size else None)
    write_report(report, args.json)
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    print(f"{report['n_regions']} regions -> k={report['k']} clusters; NMI {fmt(report['nmi'])}, "
          f"ARI {fmt(report['ari'])}, accuracy {fmt(report['accuracy'])}; sheets in {args.out}, report {args.json}")
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from normalcy.export import export_onnx

    path = export_onnx(args.model, args.out)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB): normalcy predict {path} IMAGES -o OUT")
    return EXIT_OK


def cmd_synth(args: argparse.Namespace) -> int:
    from normalcy.synth_io import synthesize

    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip()) if args.kinds else None
    counts = synthesize(args.normal_dir, args.out, n=args.n, defect_dir=args.from_defects, seed=args.seed,
                        kinds=kinds, severity_levels=args.severity_levels, train_fraction=args.train_fraction,
                        blend=args.blend)
    print(f"wrote {sum(counts.values())} synthetic anomalies to {args.out} "
          f"({', '.join(f'{k}: {v}' for k, v in counts.items())}); `normalcy bench {args.out}` evaluates them")
    return EXIT_OK


def cmd_bench(args: argparse.Namespace) -> int:
    from normalcy.bench.images import run_image_bench

    detectors = [d.strip() for d in args.detector.split(",") if d.strip()]
    from normalcy.detectors import detector_class

    if args.shots or args.seeds or args.multiclass or any(getattr(detector_class(d), "zero_shot", False)
                                                          for d in detectors):
        from normalcy.bench.fewshot import run_fewshot_bench

        ints = lambda text: [int(v) for v in text.split(",") if v.strip()] if text else None  # noqa: E731
        run_fewshot_bench(args.data, detectors, detector_params(args), args.json, args.timing_images,
                          ints(args.shots), ints(args.seeds) or [0], args.multiclass)
        return EXIT_OK
    run_image_bench(args.data, detectors, detector_params(args), args.json, args.timing_images)
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        print(f"normalcy: error: serve needs the serve extra: pip install 'normalcy[serve]' ({exc})", file=sys.stderr)
        return EXIT_ERROR
    from normalcy.serve import ServeSettings, run
    from normalcy.store import read_file

    read_file(args.model)  # a missing or broken model file is reported here, before the server starts
    mib = 1024 * 1024
    settings = ServeSettings(
        model_path=Path(args.model), max_files=args.max_files, max_file_bytes=int(args.max_file_mb * mib),
        max_request_bytes=int(args.max_request_mb * mib), max_pixels=int(args.max_megapixels * 1e6),
        queue_size=args.queue_size, workers=args.workers,
    )
    return run(settings, host=args.host, port=args.port)


COMMANDS = {"demo": cmd_demo, "fit": cmd_fit, "predict": cmd_predict, "bench": cmd_bench, "serve": cmd_serve}
COMMANDS["discover"] = cmd_discover
COMMANDS["synth"] = cmd_synth
COMMANDS["export"] = cmd_export

if __name__ == "__main__":
    raise SystemExit(main())
