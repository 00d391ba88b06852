"""The history writer: never blocks, spools when the database is down or the queue is full, replays without loss."""

from __future__ import annotations

import time

import pytest

from normalcy.apps.serve.history.store import HistoryStore, HistoryUnavailable
from normalcy.apps.serve.history.writer import HistoryWriter
from tests.test_history_store import record


def wait_for(cond, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


def test_media_files_beside_the_db_with_hash(tmp_path):
    store = HistoryStore(tmp_path / "h.sqlite")
    store.migrate()
    w = HistoryWriter(store, retry_s=0.1)
    w.schema_ready = True
    w.start()
    w.submit([record(0, thumb=b"\xff\xd8thumb", mask=b"\x89PNGmask"), record(1, thumb=b"\xff\xd8thumb")])
    assert w.flush()
    w.stop()
    rows = store.query()["items"]
    assert len(rows) == 2 and rows[0]["thumb_path"] == rows[1]["thumb_path"]  # same bytes stored once
    assert (tmp_path / "h.sqlite.files" / rows[1]["thumb_path"]).read_bytes() == b"\xff\xd8thumb"
    assert w.media.get(rows[1]["mask_path"], rows[1]["mask_sha256"]) == b"\x89PNGmask"
    assert rows[0]["mask_path"] is None
    with pytest.raises(FileNotFoundError):
        w.media.get("../h.sqlite")  # never outside the media folder
    assert w.status()["state"] == "ok" and w.status()["written"] == 2


def test_full_queue_spills_to_the_spool_and_is_replayed(tmp_path):
    store = HistoryStore(tmp_path / "h.sqlite")
    w = HistoryWriter(store, max_queue=1, retry_s=0.1)
    for i in range(5):  # writer not started yet: the first batch fills the queue, the rest go to disk
        w.submit([record(2 * i), record(2 * i + 1)])
    assert w.status()["queued"] == 1 and w.status()["spooled"] == 8 and w.overflowed == 8
    w.start()  # migrates the empty database, replays the spool, then writes the queue
    assert w.flush()
    w.stop()
    assert store.query()["total"] == 10 and w.status()["spooled"] == 0


class Flaky(HistoryStore):
    """A SQLite store whose writes fail while `down` is set (a stand-in for a network outage)."""

    down = False

    def insert(self, records):
        if self.down:
            raise HistoryUnavailable("simulated outage")
        return super().insert(records)


def test_outage_on_sqlite_spools_then_recovers(tmp_path):
    store = Flaky(tmp_path / "h.sqlite")
    store.migrate()
    w = HistoryWriter(store, retry_s=0.05)
    w.start()
    w.submit([record(0)])
    assert wait_for(lambda: w.written == 1)
    store.down = True
    for i in range(1, 30):
        w.submit([record(i)])
    assert wait_for(lambda: w.status()["state"] == "down" and w.status()["spooled"] == 29)
    assert "simulated outage" in w.status()["last_error"] and w.status()["down_since"]
    store.down = False
    assert w.flush()
    w.stop()
    assert w.status()["state"] == "ok" and store.query()["total"] == 30 and w.replayed == 29


def test_stop_spools_what_is_still_queued(tmp_path):
    store = Flaky(tmp_path / "h.sqlite")
    store.migrate()
    store.down = True
    w = HistoryWriter(store, retry_s=0.05)
    w.submit([record(i) for i in range(3)])
    w.stop()  # never started: the queue goes to the spool
    w2 = HistoryWriter(Flaky(tmp_path / "h.sqlite"), retry_s=0.05)  # a restarted server finds the spool
    assert w2.status()["spooled"] == 3
    w2.start()
    assert w2.flush()
    w2.stop()
    assert store.query()["total"] == 3


def test_postgres_stopped_mid_run_loses_nothing(postgres, tmp_path):
    """A real PostgreSQL server is stopped (immediate mode) while records keep coming, then restarted."""
    store = HistoryStore(postgres.create_database(), media_dir=tmp_path / "files", connect_timeout=1)
    store.migrate()
    w = HistoryWriter(store, retry_s=0.2)
    w.schema_ready = True
    w.start()
    total = 0
    for _ in range(20):
        w.submit([record(total + j) for j in range(3)])
        total += 3
    assert wait_for(lambda: w.written == 60)
    postgres.stop("immediate")
    try:
        for _ in range(20):  # the service keeps answering: submit returns at once while the DB is gone
            w.submit([record(total + j, thumb=b"t%d" % (total + j)) for j in range(3)])
            total += 3
        assert wait_for(lambda: w.status()["state"] == "down")
        assert wait_for(lambda: w.status()["spooled"] == 60 and w.status()["queued"] == 0)
    finally:
        postgres.start()
    assert w.flush(timeout=60)
    w.stop()
    page = store.query(limit=500)
    assert page["total"] == total == 120
    assert len({r["uid"] for r in page["items"]}) == 120
    assert all(r["thumb_path"] for r in page["items"] if r["filename"] >= "img060")
    assert w.status()["state"] == "ok" and w.replayed == 60
