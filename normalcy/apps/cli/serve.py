"""`normalcy serve`: the HTTP service and review page for one model file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from normalcy.apps.cli.common import EXIT_ERROR


def add_parser(sub: Any) -> None:
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
    p.add_argument("--db", default=None, help="keep every decision: a SQLite file (created on first start, e.g. "
                   "inspections.sqlite) or a URL, e.g. postgresql+psycopg://user:pw@host/db (see docs/serve.md)")
    p.add_argument("--history-dir", default=None, help="folder for thumbnails, masks and the spool "
                   "(default: <db file>.files beside a SQLite file, ./normalcy-history-files for a URL)")
    p.add_argument("--keep-images", action="store_true", help="with --db: keep every uploaded image as a file "
                   "too, so `normalcy fit --from-db` can train on the ones people confirmed")
    p.add_argument("--drift-budget", type=float, default=0.01, help="chance of ever raising a false drift alarm "
                   "(default 0.01)")


def run(args: argparse.Namespace) -> int:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        print(f"normalcy: error: serve needs the serve extra: pip install 'normalcy[serve]' ({exc})", file=sys.stderr)
        return EXIT_ERROR
    from normalcy.apps.serve import ServeSettings
    from normalcy.apps.serve import run as serve_run
    from normalcy.store import read_file

    read_file(args.model)  # a missing or broken model file is reported here, before the server starts
    mib = 1024 * 1024
    settings = ServeSettings(
        model_path=Path(args.model), max_files=args.max_files, max_file_bytes=int(args.max_file_mb * mib),
        max_request_bytes=int(args.max_request_mb * mib), max_pixels=int(args.max_megapixels * 1e6),
        queue_size=args.queue_size, workers=args.workers, db=args.db,
        history_dir=Path(args.history_dir) if args.history_dir else None, drift_budget=args.drift_budget,
        keep_images=args.keep_images,
    )
    return serve_run(settings, host=args.host, port=args.port)
