"""`normalcy serve`: an HTTP service and review page for a fitted model (needs the `serve` extra)."""

from __future__ import annotations

from typing import Any

from normalcy.apps.serve.settings import ServeSettings

__all__ = ["ServeSettings", "create_app", "run"]


def create_app(settings: ServeSettings | None = None, detector: Any = None) -> Any:
    """Build the FastAPI app (imported lazily so `import normalcy.apps.serve` works without FastAPI installed)."""
    from normalcy.apps.serve.app import create_app as _create

    return _create(settings, detector)


def run(settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000, **kwargs: Any) -> int:
    """Start uvicorn on a model file (see normalcy.apps.serve.server.run)."""
    from normalcy.apps.serve.server import run as _run

    return _run(settings, host, port, **kwargs)
