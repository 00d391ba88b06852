"""HTTP routes of the inspection history and drift: list, label, export, pictures, and the drift report."""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Iterator
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, Field

from normalcy.apps.results import csv_safe
from normalcy.apps.serve.history.recorder import Recorder
from normalcy.apps.serve.history.store import MAX_PAGE, HistoryFilter, HistoryUnavailable
from normalcy.errors import ParameterError

CSV_FIELDS = ["id", "created_at", "request_id", "model_id", "model_name", "model_version", "filename", "input_sha256",
              "input_bytes", "format", "width", "height", "status", "error", "score", "p_value", "alpha", "is_anomaly",
              "severity", "defect_area", "boxes", "brightness", "sharpness", "label", "label_verdict", "label_by",
              "label_at", "thumb_path", "thumb_sha256", "mask_path", "mask_sha256"]
log = logging.getLogger("normalcy.serve.history")


class LabelIn(BaseModel):
    """A person's verdict on one stored decision."""

    label: Literal["normal", "anomaly"] = Field(description="What the image really is")
    who: str = Field(min_length=1, max_length=80, description="Who says so (self-declared: the service has no login)")
    note: str = Field("", max_length=500, description="Optional free text")
    shown_flagged: bool | None = Field(None, description="Whether the decision shown to the person was 'flagged' "
                                                         "(the page's alpha); default: the stored decision")


def get_recorder(request: Request) -> Recorder:
    """Dependency: the service's recorder (503 before start-up ends)."""
    rec = getattr(request.app.state, "recorder", None)
    if rec is None:
        raise HTTPException(503, "model not loaded yet")
    return rec


def get_history(rec: Annotated[Recorder, Depends(get_recorder)]) -> Recorder:
    """Dependency: a recorder that stores decisions (404 with the fix when the server runs without --db)."""
    if not rec.enabled:
        raise HTTPException(404, "the inspection history is off: start the server with --db inspections.sqlite "
                                 "(or --db postgresql+psycopg://...)")
    return rec


History = Annotated[Recorder, Depends(get_history)]


def filters(
    since: Annotated[datetime | None, Query(description="Only decisions at or after this time (ISO 8601)")] = None,
    until: Annotated[datetime | None, Query(description="Only decisions before this time (ISO 8601)")] = None,
    decision: Annotated[Literal["flagged", "passed", "error"] | None, Query(description="Decision")] = None,
    severity: Annotated[Literal["normal", "suspicious", "anomalous", "severe"] | None,
                        Query(description="Severity grade")] = None,
    model_id: Annotated[str | None, Query(max_length=64, description="SHA-256 of the model file")] = None,
    alpha: Annotated[float | None, Query(gt=0, lt=1, description="Re-decide decision/severity at this alpha from "
                                                                 "the stored p-values (default: as answered)")] = None,
) -> HistoryFilter:
    """Query parameters shared by the list and the CSV export."""
    return HistoryFilter(since=since, until=until, decision=decision, severity=severity, model_id=model_id,
                         alpha=alpha)


Filters = Annotated[HistoryFilter, Depends(filters)]


def unavailable(exc: HistoryUnavailable) -> HTTPException:
    """503 for the client (the details go to the server log; /health shows since when)."""
    log.warning("history request failed: %s", exc)
    return HTTPException(503, "history database unavailable (decisions are still made and spooled); "
                              "GET /health shows since when", headers={"Retry-After": "5"})


def build_router() -> APIRouter:
    """The /history and /drift routes."""
    router = APIRouter(tags=["history"])

    @router.get("/history", summary="Stored decisions, newest first, filtered and paged")
    async def history(rec: History, flt: Filters,
                      limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="Rows per page")] = 50,
                      before: Annotated[int | None, Query(ge=1, description="Cursor: next_before of the previous "
                                                                            "page")] = None) -> dict[str, Any]:
        try:
            page = await rec.call(rec.store.query, flt, limit=limit, before=before)
        except HistoryUnavailable as exc:
            raise unavailable(exc) from None
        return page | {"model_id": rec.model_id}

    @router.get("/history/models", summary="Models that have stored decisions")
    async def models(rec: History) -> list[dict[str, Any]]:
        try:
            return await rec.call(rec.store.models)
        except HistoryUnavailable as exc:
            raise unavailable(exc) from None

    @router.get("/history.csv", summary="Export the filtered decisions as CSV (oldest first)")
    async def export(rec: History, flt: Filters) -> StreamingResponse:
        try:
            await rec.call(rec.store.ping)
        except HistoryUnavailable as exc:
            raise unavailable(exc) from None
        return StreamingResponse(csv_lines(rec.store.iter_rows(flt)), media_type="text/csv; charset=utf-8",
                                 headers={"Content-Disposition": 'attachment; filename="normalcy-history.csv"'})

    @router.get("/history/{inspection_id}", summary="One stored decision with all its labels")
    async def one(rec: History, inspection_id: int) -> dict[str, Any]:
        try:
            return await rec.call(rec.store.get, inspection_id)
        except KeyError:
            raise HTTPException(404, f"no inspection {inspection_id}") from None
        except HistoryUnavailable as exc:
            raise unavailable(exc) from None

    @router.post("/history/{inspection_id}/label", summary="Confirm or overrule a decision (stored with who/when)")
    async def label(rec: History, inspection_id: int, body: LabelIn) -> dict[str, Any]:
        try:
            return await rec.call(rec.store.add_label, inspection_id, body.label, body.who, note=body.note,
                                  shown_flagged=body.shown_flagged)
        except KeyError:
            raise HTTPException(404, f"no inspection {inspection_id}") from None
        except ParameterError as exc:
            raise HTTPException(409, str(exc)) from None
        except HistoryUnavailable as exc:
            raise unavailable(exc) from None

    @router.get("/history/{inspection_id}/{kind}", summary="The stored thumbnail (JPEG) or defect mask (PNG)")
    async def picture(rec: History, inspection_id: int, kind: Literal["thumb", "mask"]) -> Response:
        try:
            row = await rec.call(rec.store.get, inspection_id)
            path, digest = row[f"{kind}_path"], row[f"{kind}_sha256"]
            if not path:
                raise KeyError(kind)
            data = await rec.call(rec.writer.media.get, path, digest)
        except (KeyError, FileNotFoundError):
            raise HTTPException(404, f"inspection {inspection_id} has no stored {kind}") from None
        except HistoryUnavailable as exc:
            raise unavailable(exc) from None
        return Response(data, media_type="image/jpeg" if kind == "thumb" else "image/png",
                        headers={"Cache-Control": "private, max-age=86400", "X-Content-Type-Options": "nosniff"})

    @router.get("/drift", summary="Drift of normal-decided images: conformal test martingales and the alarm level")
    async def drift(rec: Annotated[Recorder, Depends(get_recorder)],
                    points: Annotated[int, Query(ge=10, le=5000, description="Max points per series")] = 600
                    ) -> dict[str, Any]:
        return rec.drift.report(points)

    return router


def csv_cell(value: Any) -> str:
    """One CSV value; text that a spreadsheet would run as a formula (=, +, -, @, tab, CR first) gets a leading '."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value) if isinstance(value, float) else str(value)
    return csv_safe(str(value))


def csv_row(row: dict[str, Any]) -> list[str]:
    """A stored decision as CSV cells (regions reduced to their boxes; the latest label spelled out)."""
    lab = row.get("label") or {}
    values = dict(row, boxes=json.dumps([r.get("box") for r in row.get("regions") or []]) if row.get("regions")
                  else "", label=lab.get("label"), label_verdict=lab.get("verdict"), label_by=lab.get("who"),
                  label_at=lab.get("at"))
    return [csv_cell(values.get(k)) for k in CSV_FIELDS]


def csv_lines(rows: Iterator[dict[str, Any]]) -> Iterator[str]:
    """Header and rows as CSV text, streamed."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(CSV_FIELDS)
    yield buf.getvalue()
    for row in rows:
        buf.seek(0)
        buf.truncate()
        writer.writerow(csv_row(row))
        yield buf.getvalue()
