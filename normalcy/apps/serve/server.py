"""Start the service with uvicorn (what `normalcy serve` runs)."""

from __future__ import annotations

from normalcy.apps.serve.settings import ServeSettings


def run(settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
        limit_concurrency: int | None = 64) -> int:
    """Serve until interrupted; returns 0, or 2 when start-up failed (e.g. the model could not be loaded)."""
    import uvicorn

    from normalcy.apps.serve.app import create_app

    app = create_app(settings)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on",
                            limit_concurrency=limit_concurrency, timeout_keep_alive=5)
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 2
