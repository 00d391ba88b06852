"""Parser and dispatch for `normalcy CMD`: each command module adds its sub-parser and runs it."""

from __future__ import annotations

import argparse
import importlib
import sys

from normalcy import __version__
from normalcy.apps.cli.common import EXIT_ERROR
from normalcy.apps.memory import keep_freed_memory
from normalcy.errors import NormalcyError

# Command name -> module in normalcy.apps.cli with `add_parser(sub)` and `run(args)`, in --help order.
COMMANDS = ("demo", "fit", "predict", "bench", "serve", "export", "discover", "synth")


def _module(name: str):
    return importlib.import_module(f"normalcy.apps.cli.{name}")


def build_parser() -> argparse.ArgumentParser:
    """The whole argument parser (cheap: no command imports anything heavy until it runs)."""
    parser = argparse.ArgumentParser(prog="normalcy", description="Learn what normal looks like; flag what is not.")
    parser.add_argument("--version", action="version", version=f"normalcy {__version__}")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS[:4]:
        _module(name).add_parser(sub)
    sub.add_parser("bench-vector", help="tables/texts/series benchmark against PyOD (see docs/vector.md)",
                   add_help=False)
    for name in COMMANDS[4:]:
        _module(name).add_parser(sub)
    return parser


def os_error_line(exc: OSError) -> str:
    """One line for an operating-system error: what failed, on which file, and the usual fix."""
    what = exc.strerror or str(exc) or type(exc).__name__
    where = f"{exc.filename}: " if exc.filename else ""
    hint = {13: "; check the folder's permissions or choose another -o", 28: "; free some disk space",
            21: "; give a file name, not a folder", 20: "; a path component is a file, not a folder",
            2: "; check the path", 17: "; a file is in the way of a folder of that name"}.get(exc.errno or 0, "")
    return f"{where}{what}{hint}"


def main(argv: list[str] | None = None) -> int:
    """Run one command; typed errors print one line and exit 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "bench-vector":
            from normalcy.apps.bench.vector import main as vector_main

            return vector_main(argv[1:])
        args = build_parser().parse_args(argv)
        keep_freed_memory()  # large tensors reuse freed memory instead of page-faulting each call (apps/memory.py)
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        return _module(args.command).run(args)
    except NormalcyError as exc:
        print(f"normalcy: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:  # a file the command had to read or write: full disk, no permission, a folder in the way
        print(f"normalcy: error: {os_error_line(exc)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("normalcy: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
