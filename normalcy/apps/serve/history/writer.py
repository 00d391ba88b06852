"""Write inspection records off the request path: a bounded queue, one writer thread, a disk spool when the DB is down.

`submit` never waits for the database: it puts the records on a bounded queue, or, when the queue is full, appends
them to the spool file straight away. The writer thread stores thumbnails and masks as files, then inserts rows in
batches. When an insert fails (database down, disk full on the server...), the batch goes to the spool (JSON lines,
fsynced) and the writer retries every `retry_s` seconds; once the database answers again the spool is replayed in
order. Inserts skip uids already stored, so a batch that was written but whose commit reply was lost is not doubled.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from normalcy.apps.serve.history.media import MediaStore
from normalcy.apps.serve.history.store import HistoryStore, HistoryUnavailable

log = logging.getLogger("normalcy.serve.history")
SPOOL_NAME = "spool.jsonl"
SUFFIXES = {"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp", "TIFF": ".tif", "WEBP": ".webp"}  # kept uploads


class Spool:
    """Records not yet in the database, as JSON lines in a folder; appended by anyone, replayed by the writer."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.count = sum(self._lines(p) for p in self.files())

    def files(self) -> list[Path]:
        """Spool files in replay order (older `replay-*` batches first, then the live file)."""
        return sorted(self.folder.glob("replay-*.jsonl")) + [p for p in [self.folder / SPOOL_NAME] if p.exists()]

    def append(self, records: list[dict[str, Any]]) -> None:
        """Append records durably (fsync) to the live file."""
        if not records:
            return
        text = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records)
        with self._lock, open(self.folder / SPOOL_NAME, "a", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
            self.count += len(records)

    def rotate(self) -> None:
        """Move the live file aside (replay-<ns>.jsonl) so new appends do not race with its replay."""
        with self._lock:
            live = self.folder / SPOOL_NAME
            if live.exists():
                os.replace(live, self.folder / f"replay-{time.time_ns():020d}.jsonl")

    def read(self, path: Path) -> list[dict[str, Any]]:
        """Records of one spool file (a torn last line from a crash mid-write is skipped)."""
        out = []
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    log.warning("skipping a torn line in %s", path)
        return out

    def done(self, path: Path, n: int) -> None:
        """A file was replayed: delete it."""
        path.unlink(missing_ok=True)
        with self._lock:
            self.count = max(0, self.count - n)

    @staticmethod
    def _lines(path: Path) -> int:
        with open(path, "rb") as f:
            return sum(1 for _ in f)


class HistoryWriter:
    """The one thread that writes history: bounded queue in front, spool behind; `status()` feeds /health."""

    def __init__(self, store: HistoryStore, *, spool_dir: str | Path | None = None, max_queue: int = 256,
                 batch_size: int = 64, retry_s: float = 2.0) -> None:
        self.store = store
        self.media = MediaStore(store.media_dir)
        self.spool = Spool(spool_dir or Path(store.media_dir) / "spool")
        self.batch_size = batch_size
        self.retry_s = retry_s
        self._queue: queue.Queue[list[dict[str, Any]]] = queue.Queue(maxsize=max_queue)
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._thread: threading.Thread | None = None
        self.db_ok: bool | None = None  # unknown until the first write or ping
        self.schema_ready = False
        self.last_error = ""
        self.last_error_at: str | None = None
        self.down_since: str | None = None
        self.written = 0
        self.replayed = 0
        self.overflowed = 0  # records spooled directly because the queue was full

    # ---- producer side (request handlers) -----------------------------------------------------------------
    def submit(self, records: list[dict[str, Any]]) -> None:
        """Hand records over without waiting: the queue, or the spool when the queue is full. Never raises for DB
        trouble; media bytes (`thumb`, `mask`) are written by the writer thread (or here when spooling)."""
        if not records:
            return
        try:
            self._queue.put_nowait(records)
            self._idle.clear()
        except queue.Full:
            self.overflowed += len(records)
            self.spool.append([self._store_media(r) for r in records])

    def status(self) -> dict[str, Any]:
        """Database state and backlog, for `GET /health`."""
        state = "ok" if self.db_ok else ("unknown" if self.db_ok is None else "down")
        return {"enabled": True, "database": self.store.backend, "name": self.store.public_name, "state": state,
                "last_error": self.last_error, "last_error_at": self.last_error_at, "down_since": self.down_since,
                "queued": self._queue.qsize(), "spooled": self.spool.count, "written": self.written,
                "replayed": self.replayed, "overflowed": self.overflowed}

    # ---- lifecycle ----------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the writer thread (a daemon: a killed server loses only what the spool did not yet hold)."""
        self._thread = threading.Thread(target=self._run, name="normalcy-history-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is queued (to the DB, or the spool if it is down) and stop the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        leftover = self._drain(10**9)
        if leftover:
            self.spool.append([self._store_media(r) for r in leftover])

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until the queue and the spool are empty (True) or the timeout passes (False); for tests and tools."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._queue.empty() and self.spool.count == 0 and self._idle.is_set():
                return True
            time.sleep(0.02)
        return False

    # ---- writer thread ------------------------------------------------------------------------------------
    def _run(self) -> None:
        next_retry = 0.0
        while not self._stop.is_set():
            try:
                first = self._queue.get(timeout=min(self.retry_s, 0.5))
            except queue.Empty:
                first = None
            batch = ([self._store_media(r) for r in first] if first else [])
            batch += [self._store_media(r) for r in self._drain(self.batch_size)]
            backlog = self.spool.count > 0 or self.db_ok is False or not self.schema_ready
            if backlog and time.monotonic() >= next_retry:
                if self._recover():
                    backlog = False
                else:
                    next_retry = time.monotonic() + self.retry_s
            if batch and backlog:
                self.spool.append(batch)  # keep order: nothing jumps ahead of the spool
            elif batch:
                try:
                    self.written += self.store.insert(batch)
                    self._ok()
                except HistoryUnavailable as exc:
                    self._down(exc)
                    self.spool.append(batch)
                    next_retry = time.monotonic() + self.retry_s
            if self._queue.empty() and not batch and self.spool.count == 0:
                self._idle.set()

    def _drain(self, n: int) -> list[dict[str, Any]]:
        """Take up to n queued records without waiting."""
        out: list[dict[str, Any]] = []
        while len(out) < n:
            try:
                out += self._queue.get_nowait()
            except queue.Empty:
                break
        return out

    def _recover(self) -> bool:
        """Make sure the schema exists, then replay the spool; True when everything is in the database."""
        try:
            if not self.schema_ready:
                self.store.migrate()
                self.schema_ready = True
            self.spool.rotate()
            for path in self.spool.files():
                records = self.spool.read(path)
                for i in range(0, len(records), 500):
                    self.replayed += self.store.insert(records[i:i + 500])
                self.spool.done(path, len(records))
            self._ok()
            return True
        except HistoryUnavailable as exc:
            self._down(exc)
            return False

    def _store_media(self, rec: dict[str, Any]) -> dict[str, Any]:
        """Write the record's thumbnail/mask bytes as files and keep only path + hash (JSON-ready record)."""
        rec = dict(rec)
        for key, suffix in (("thumb", ".jpg"), ("mask", ".png"), ("input", SUFFIXES.get(rec.get("format"), ""))):
            data = rec.pop(key, None)
            if data:
                try:
                    rec[f"{key}_path"], rec[f"{key}_sha256"] = self.media.put(data, suffix)
                except OSError as exc:
                    log.error("cannot store %s of %s: %s", key, rec.get("filename"), exc)
        if isinstance(rec.get("created_at"), datetime):
            rec["created_at"] = rec["created_at"].isoformat()
        return rec

    def _ok(self) -> None:
        if self.db_ok is False:
            log.warning("history database %s is back", self.store.display_url)
        self.db_ok = True
        self.down_since = None

    def _down(self, exc: Exception) -> None:
        if self.db_ok is not False:
            log.error("history database down, spooling to %s: %s", self.spool.folder, exc)
            self.down_since = _now()
        self.db_ok = False
        self.last_error = str(exc)
        self.last_error_at = _now()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
