"""Run the tabular side-by-side benchmark (normalcy vs PyOD) exactly as documented in docs/vector.md.

Usage: python benchmarks/vector_tabular.py [extra bench-vector options]
"""

from __future__ import annotations

import sys
from pathlib import Path

from normalcy.apps.bench.vector import main

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"

if __name__ == "__main__":
    raise SystemExit(main([str(DATA / "tabular"), "--json", "vector_tabular.json", *sys.argv[1:]]))
