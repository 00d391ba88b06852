"""`normalcy export`: one ONNX graph with the model's metadata."""

from __future__ import annotations

import argparse
from typing import Any

from normalcy.apps.cli.common import EXIT_OK


def add_parser(sub: Any) -> None:
    p = sub.add_parser("export", help="export a model to one ONNX graph with its metadata (needs normalcy[onnx])")
    p.add_argument("model", help="a .normalcy model file (patchcore, padim or gaussian)")
    p.add_argument("-o", "--out", required=True, help="ONNX file to write, e.g. model.onnx")


def run(args: argparse.Namespace) -> int:
    from normalcy.apps.export import export_onnx

    path = export_onnx(args.model, args.out)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB): normalcy predict {path} IMAGES -o OUT")
    return EXIT_OK
