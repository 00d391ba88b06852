"""normalcy: learn what normal looks like; flag, localize and explain what is not."""

from __future__ import annotations

__version__ = "0.1.0"

from normalcy import data, metrics  # noqa: E402
from normalcy.api import *  # noqa: E402,F403
from normalcy.api import __all__ as _api_all  # noqa: E402

__all__ = ["__version__", "data", "metrics", *_api_all]
