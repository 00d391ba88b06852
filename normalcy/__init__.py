"""normalcy: learn what normal looks like; flag, localize and explain what is not."""

from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning: on a busy 2-core machine spinning made torch up to 100x slower
# (measured); set OMP_WAIT_POLICY yourself before importing torch to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

from normalcy import data, metrics  # noqa: E402
from normalcy.api import *  # noqa: E402,F403
from normalcy.api import __all__ as _api_all  # noqa: E402

__all__ = ["__version__", "data", "metrics", *_api_all]
