"""The API page `/docs` (Swagger UI) served entirely from this machine: its script and styles come from the
`fastapi-offline` package's files, never from a CDN, so it renders offline and behind firewalls. There is no
`/redoc`: ReDoc's bundle fetches its logo from a CDN."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from fastapi import FastAPI, HTTPException
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response

ASSET_PREFIX = "/docs-assets"
# the only files served, by fixed name (no client-chosen path is ever opened)
ASSETS = {"swagger-ui-bundle.js": "text/javascript; charset=utf-8", "swagger-ui.css": "text/css; charset=utf-8",
          "favicon.png": "image/png"}
MISSING = ("<!doctype html><title>API docs unavailable</title><p>The API page needs the Swagger UI files: "
           "<code>pip install 'normalcy[serve]'</code> (package <code>fastapi-offline</code>). "
           "The API itself works; its description is at <a href='/openapi.json'>/openapi.json</a>.</p>")


@cache
def asset_dir() -> Path | None:
    """The folder holding the Swagger UI files, or None when fastapi-offline is not installed."""
    try:
        import fastapi_offline
    except ImportError:
        return None
    folder = Path(fastapi_offline.__file__).parent / "static"
    return folder if all((folder / name).is_file() for name in ASSETS) else None


@cache
def _asset(name: str) -> bytes:
    folder = asset_dir()
    assert folder is not None
    return (folder / name).read_bytes()


def add_docs_pages(app: FastAPI) -> None:
    """Add `/docs` and its asset routes to an app created with `docs_url=None, redoc_url=None`."""
    title = f"{app.title} - API"
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        if asset_dir() is None:
            return HTMLResponse(MISSING, status_code=503)
        return get_swagger_ui_html(openapi_url=openapi_url, title=title,
                                   swagger_js_url=f"{ASSET_PREFIX}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{ASSET_PREFIX}/swagger-ui.css",
                                   swagger_favicon_url=f"{ASSET_PREFIX}/favicon.png")

    @app.get(ASSET_PREFIX + "/{name}", include_in_schema=False)
    async def docs_asset(name: str) -> Response:
        if name not in ASSETS or asset_dir() is None:
            raise HTTPException(404, "not found")
        return Response(_asset(name), media_type=ASSETS[name], headers={"Cache-Control": "max-age=86400"})
