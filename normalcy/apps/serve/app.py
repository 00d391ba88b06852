"""The FastAPI application: model loaded once at start-up, injected into routes; JSON API plus the review page."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response

from normalcy.apps.serve.bodylimit import BodyLimitMiddleware
from normalcy.apps.serve.docs_page import add_docs_pages
from normalcy.apps.serve.history.recorder import new_request_id, open_recorder
from normalcy.apps.serve.history.routes import build_router as history_routes
from normalcy.apps.serve.schemas import ErrorBody, Health, ModelInfo, PredictResponse
from normalcy.apps.serve.service import ModelService, PendingImage, model_source_name
from normalcy.apps.serve.settings import ServeSettings
from normalcy.apps.serve.uploads import UploadRejected, inspect_upload
from normalcy.apps.serve.workqueue import QueueFull

STATIC_DIR = Path(__file__).parent / "static"
# the only files the page needs, served from memory by fixed name (no client-chosen path is ever opened)
STATIC_FILES = {"index.html": "text/html; charset=utf-8", "app.css": "text/css; charset=utf-8",
                "app.js": "text/javascript; charset=utf-8", "history.js": "text/javascript; charset=utf-8",
                "history.css": "text/css; charset=utf-8"}
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; "
                               "script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}
ERRORS = {status: {"model": ErrorBody, "description": text} for status, text in (
    (413, "A limit was exceeded: bytes per file or request, pixels per image, or files per request"),
    (415, "A file is not a PNG, JPEG, BMP, TIFF or WebP image by content"),
    (503, "The inference queue is full; retry after the Retry-After seconds"),
)}
ALPHA_DOC = "Target false-alarm rate for this request (0 < alpha < 1); default: the model's"
PIXEL_DOC = "Pixel false-positive rate for the defect mask (0 < pixel_fpr < 1); default: the model's"


def get_service(request: Request) -> ModelService:
    """Dependency: the ModelService built by the lifespan (503 while it is not loaded yet)."""
    service = getattr(request.app.state, "service", None)
    if service is None:
        raise HTTPException(503, "model not loaded yet")
    return service


Service = Annotated[ModelService, Depends(get_service)]


def create_app(settings: ServeSettings | None = None, detector: Any = None) -> FastAPI:
    """Build the app; the model is loaded from `settings.model_path` at start-up unless `detector` is given."""
    settings = settings or ServeSettings()
    from normalcy.apps.serve.rows import create_rows_app, model_kind

    kind = getattr(detector, "kind", None) or (model_kind(settings.model_path) if settings.model_path else "image")
    if kind != "image":  # tables, texts, series: JSON in, JSON out (rows.py)
        return create_rows_app(settings, detector)
    static = {name: (STATIC_DIR / name).read_bytes() for name in STATIC_FILES}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        det = detector
        if det is None:
            from normalcy.store import load

            if settings.model_path is None:
                raise RuntimeError("ServeSettings.model_path is required when no detector is given")
            det = await asyncio.to_thread(load, settings.model_path)
        service = ModelService(det, settings, model_source_name(settings.model_path))
        await asyncio.to_thread(service.warm_up)
        recorder = await asyncio.to_thread(open_recorder, det, settings)  # history DB + drift (history/)
        service.capture = recorder.capture
        app.state.recorder = recorder
        app.state.service = service
        app.state.started = time.monotonic()
        try:
            yield
        finally:
            app.state.service = None
            service.queue.shutdown()
            await asyncio.to_thread(recorder.close)  # writes or spools every accepted decision

    app = FastAPI(
        title="normalcy serve",
        summary="Anomaly detection as a service: score images against a fitted normalcy model.",
        description="Upload images to `POST /predict`; every decision is a calibrated false-alarm-rate decision. "
                    "The review page is at `/`. Limits and fields: docs/serve.md.",
        lifespan=lifespan,
        docs_url=None,  # /docs: served offline by add_docs_pages; no /redoc (its bundle calls a CDN)
        redoc_url=None,
    )
    add_docs_pages(app)
    app.state.service = None
    app.state.recorder = None
    app.include_router(history_routes())
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # details go to the server log only: a client never sees internals (object reprs, addresses, paths)
        logging.getLogger("normalcy.serve").error("unexpected error on %s", request.url.path, exc_info=exc)
        return JSONResponse({"detail": "internal error; the server log has the details"}, status_code=500)

    @app.get("/health", response_model=Health, summary="Liveness and queue load")
    async def health(request: Request) -> dict[str, Any]:
        service = getattr(request.app.state, "service", None)
        recorder = getattr(request.app.state, "recorder", None)
        return {"status": "ok", "model_loaded": service is not None,
                "history": recorder.status() if recorder else None,
                "drift": recorder.drift.summary() if recorder else None,
                "queue": service.queue.stats() if service else {},
                "uptime_s": time.monotonic() - getattr(request.app.state, "started", time.monotonic())}

    @app.get("/model", response_model=ModelInfo, summary="The served model, its calibration and the limits")
    async def model(service: Service) -> dict[str, Any]:
        return service.info()

    @app.post("/predict", response_model=PredictResponse, responses=ERRORS,
              summary="Score uploaded images: decision, p-value, severity, regions, overlay and mask")
    async def predict(
        request: Request,
        service: Service,
        files: Annotated[list[UploadFile], File(min_length=1,  # schema minItems 1 = the 422 for none
                                                description="One or more images (PNG, JPEG, BMP, TIFF, WebP)")],
        alpha: Annotated[float | None, Query(gt=0, lt=1, description=ALPHA_DOC)] = None,
        pixel_fpr: Annotated[float | None, Query(gt=0, lt=1, description=PIXEL_DOC)] = None,
        pictures: Annotated[bool, Query(description="Include overlay, heatmap and mask PNGs")] = True,
        alpha_form: Annotated[float | None, Form(alias="alpha", gt=0, lt=1, description=ALPHA_DOC)] = None,
        pixel_fpr_form: Annotated[float | None, Form(alias="pixel_fpr", gt=0, lt=1, description=PIXEL_DOC)] = None,
    ) -> dict[str, Any]:
        start = time.perf_counter()
        a, p = service.resolve(alpha_form if alpha_form is not None else alpha,
                               pixel_fpr_form if pixel_fpr_form is not None else pixel_fpr)
        items = check_uploads(files, settings)
        try:
            results = await service.queue.run(service.predict_batch, items, a, p, pictures)
        except QueueFull as exc:
            raise HTTPException(503, str(exc), headers={"Retry-After": "1"}) from None
        request_id = new_request_id(request.headers.get("x-request-id"))
        request.app.state.recorder.record(results, alpha=a, request_id=request_id)  # queued, never waits for the DB
        n_err = sum(r["status"] == "error" for r in results)
        return {"request_id": request_id, "detector": service.detector.name, "alpha": a, "pixel_fpr": p,
                "score_threshold": service.threshold(a),
                "n_ok": len(results) - n_err, "n_error": n_err, "elapsed_ms": (time.perf_counter() - start) * 1e3,
                "results": results}

    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        return Response(static["index.html"], media_type=STATIC_FILES["index.html"], headers=PAGE_HEADERS)

    @app.get("/static/{name}", include_in_schema=False)
    async def asset(name: str) -> Response:
        if name not in STATIC_FILES or name == "index.html":
            raise HTTPException(404, f"no static file {name!r}")
        return Response(static[name], media_type=STATIC_FILES[name], headers=PAGE_HEADERS)

    return app


def check_uploads(files: list[UploadFile], settings: ServeSettings) -> list[PendingImage]:
    """Enforce count, bytes, type and pixel limits before any decoding; HTTPException 413/415 on the first breach."""
    if len(files) > settings.max_files:
        raise HTTPException(413, f"{len(files)} files in one request, above the limit max_files={settings.max_files}; "
                                 "split the batch")
    items = []
    for i, f in enumerate(files):
        name = (f.filename or f"file {i}")[:255]
        size = f.size if f.size is not None else _size_of(f)
        if size > settings.max_file_bytes:
            raise HTTPException(413, f"{name!r} is {size} bytes, above the limit max_file_bytes="
                                     f"{settings.max_file_bytes}")
        try:
            info = inspect_upload(f.file, name, settings.max_pixels)
        except UploadRejected as exc:
            raise HTTPException(exc.status, exc.detail) from None
        items.append(PendingImage(i, name, f.file, info))
    return items


def _size_of(f: UploadFile) -> int:
    """Byte size of an upload whose size the parser did not record."""
    f.file.seek(0, 2)
    size = f.file.tell()
    f.file.seek(0)
    return size
