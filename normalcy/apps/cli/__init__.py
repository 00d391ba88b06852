"""The `normalcy` command line: one module per command, each a thin parser over the Python API; heavy imports
(torch, scikit-learn) happen inside a command's `run`, so `normalcy --help` is instant."""

from normalcy.apps.cli.common import EXIT_ERROR, EXIT_OK, EXIT_SOME_FAILED
from normalcy.apps.cli.main import build_parser, main

__all__ = ["EXIT_ERROR", "EXIT_OK", "EXIT_SOME_FAILED", "build_parser", "main"]
