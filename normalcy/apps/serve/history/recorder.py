"""What the service does with each decision besides answering: keep it in the history DB and feed the drift monitor."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from normalcy.apps.serve.history.capture import HISTORY_KEY, capture
from normalcy.apps.serve.history.store import HistoryStore, HistoryUnavailable
from normalcy.apps.serve.history.writer import HistoryWriter
from normalcy.calibration.drift import DriftMonitor

log = logging.getLogger("normalcy.serve.history")


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file (the model id: two servers with the same file agree, a retrained model differs)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class DriftTracker:
    """The service's drift monitor: images whose score is at or below the model's default-alpha threshold."""

    def __init__(self, detector: Any, *, budget: float = 0.01) -> None:
        cal = detector.calibration_
        self.alpha = float(detector.alpha)
        self.max_score = float(cal.threshold(self.alpha))  # +inf when nothing can be flagged at this alpha
        reference = [float(s) for s in cal.scores if s <= self.max_score]
        self.monitor = DriftMonitor(reference, budget=budget)
        self._lock = threading.Lock()

    def add(self, score: float | None, brightness: float | None, sharpness: float | None,
            t: float | None = None) -> None:
        """Feed one scored image (ignored unless decided normal at the model's alpha and fully measured)."""
        if score is None or brightness is None or sharpness is None or not math.isfinite(score):
            return
        if score > self.max_score:
            return
        with self._lock:
            self.monitor.update(score, brightness, sharpness, t=t)

    def summary(self) -> dict[str, Any]:
        """The drift part of `GET /health`: images watched and the alarm (None while quiet)."""
        return {"n": self.monitor.n, "alarm": self.monitor.alarm}

    def report(self, max_points: int = 600) -> dict[str, Any]:
        """`GET /drift`: the monitor's state plus what it watches."""
        with self._lock:
            out = self.monitor.report(max_points)
        out["alpha"] = self.alpha
        out["max_score"] = self.max_score if math.isfinite(self.max_score) else None
        out["reference_n"] = self.monitor.stats["score"].martingales["up"].n_reference
        return out


class Recorder:
    """History (when a database is configured) and drift for one served model."""

    def __init__(self, detector: Any, *, db: str | Path | None = None, media_dir: str | Path | None = None,
                 model_id: str = "", model_version: str | None = None, server_version: str | None = None,
                 drift_budget: float = 0.01, max_queue: int = 256, keep_images: bool = False) -> None:
        self.detector = detector
        self.model_id = model_id or "in-memory"
        self.keep_images = keep_images
        self.model_version = model_version
        self.server_version = server_version
        self.drift = DriftTracker(detector, budget=drift_budget)
        self.store = HistoryStore(db, media_dir=media_dir) if db is not None else None
        self.writer = HistoryWriter(self.store, max_queue=max_queue) if self.store is not None else None
        cal = detector.calibration_
        sev = cal.severe_threshold()
        self.severe_threshold = float(sev) if math.isfinite(sev) else None

    def capture(self, data: bytes, image: Any = None, mask: Any = None) -> dict[str, Any]:
        """Extras of one upload (called on the inference thread): thumbnails and masks only when history is on."""
        return capture(data, image, mask, pictures=self.enabled, keep_input=self.enabled and self.keep_images)

    @property
    def enabled(self) -> bool:
        """True when decisions are stored (a --db was given)."""
        return self.store is not None

    def open(self) -> None:
        """Migrate the schema, rebuild the drift monitor from stored decisions, start the writer.

        An unreachable database does not stop the service: decisions are spooled until it answers. A database
        that answers but cannot be migrated (wrong schema, permissions) is an error at start-up.
        """
        if self.store is None or self.writer is None:
            return
        try:
            self.store.migrate()
            self.writer.schema_ready = True
            self.writer.db_ok = True
            self._replay_drift()
        except HistoryUnavailable as exc:
            if not _is_connection_error(exc):
                raise
            log.error("history database unreachable at start-up, spooling until it answers: %s", exc)
            self.writer._down(exc)
        self.writer.start()

    def close(self) -> None:
        """Write or spool everything accepted, then close connections."""
        if self.writer is not None:
            self.writer.stop()
        if self.store is not None:
            self.store.dispose()

    def _replay_drift(self) -> None:
        """Feed the drift monitor with this model's stored normal-decided images (continuity across restarts)."""
        assert self.store is not None
        for score, bright, sharp, t in self.store.normal_stream(self.model_id, self.drift.max_score):
            self.drift.add(score, bright, sharp, t)

    def record(self, results: list[dict[str, Any]], *, alpha: float, request_id: str) -> None:
        """Take the private extras out of the results, queue one history row per image, update drift.

        Runs on the event loop after the response is built; never waits for the database, and a failure here is
        logged, never turned into a failed request.
        """
        try:
            self._record(results, alpha, request_id)
        except Exception:
            log.exception("could not record request %s in the history", request_id)
            for res in results:
                res.pop(HISTORY_KEY, None)

    def _record(self, results: list[dict[str, Any]], alpha: float, request_id: str) -> None:
        now = datetime.now(UTC)
        rows = []
        for res in results:
            extra = res.pop(HISTORY_KEY, None) or {}
            self.drift.add(res.get("score"), extra.get("brightness"), extra.get("sharpness"), now.timestamp())
            if self.writer is None:
                continue
            res["inspection_uid"] = uid = uuid.uuid4().hex
            rows.append({
                "uid": uid, "created_at": now, "request_id": request_id, "model_id": self.model_id,
                "model_name": self.detector.name, "model_version": self.model_version,
                "server_version": self.server_version, "filename": res.get("filename", ""),
                "format": res.get("format"), "width": res.get("width"), "height": res.get("height"),
                "status": res.get("status", "ok"), "error": res.get("error") or "", "score": res.get("score"),
                "p_value": res.get("p_value"), "alpha": alpha, "is_anomaly": res.get("is_anomaly"),
                "severity": res.get("severity"), "severe_threshold": self.severe_threshold,
                "defect_area": res.get("defect_area"), "regions": _plain(res.get("regions") or []),
                **{k: extra.get(k) for k in ("input_sha256", "input_bytes", "brightness", "sharpness", "thumb",
                                             "mask", "input")}})
        if self.writer is not None:
            self.writer.submit(rows)

    def status(self) -> dict[str, Any]:
        """The `history` part of `GET /health`."""
        if self.writer is None:
            return {"enabled": False}
        return self.writer.status() | {"model_id": self.model_id}

    async def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a blocking store call off the event loop."""
        return await asyncio.to_thread(fn, *args, **kwargs)


def open_recorder(detector: Any, settings: Any) -> Recorder:
    """The recorder for a service: model id = SHA-256 of the model file; history only when `settings.db` is set."""
    from normalcy import __version__

    meta = getattr(detector, "model_meta_", {}) or {}
    rec = Recorder(detector, db=settings.db, media_dir=settings.history_dir,
                   model_id=file_sha256(settings.model_path) if settings.model_path else "",
                   model_version=meta.get("normalcy_version"), server_version=__version__,
                   drift_budget=settings.drift_budget, keep_images=settings.keep_images)
    rec.open()
    return rec


def new_request_id(header: str | None) -> str:
    """The client's X-Request-ID when it is short and printable, else a fresh one."""
    if header and len(header) <= 64 and header.isascii() and header.isprintable() and header.strip():
        return header.strip()
    return uuid.uuid4().hex


def _is_connection_error(exc: HistoryUnavailable) -> bool:
    """A connection failure (server down), as opposed to a database that answers but refuses."""
    from sqlalchemy.exc import InterfaceError, OperationalError

    cause = exc.__cause__
    return isinstance(cause, OperationalError | InterfaceError) and "sqlite" not in str(type(cause.orig)).lower()


def _plain(regions: list[Any]) -> list[dict[str, Any]]:
    """Regions as plain JSON values (numpy numbers and tuples become Python numbers and lists)."""
    out = []
    for r in regions:
        d = dict(r) if isinstance(r, dict) else dict(getattr(r, "__dict__", {}))
        out.append({k: _num(v) for k, v in d.items()})
    return out


def _num(v: Any) -> Any:
    if isinstance(v, list | tuple):
        return [_num(x) for x in v]
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


