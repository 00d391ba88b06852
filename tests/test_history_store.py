"""History database on SQLite and on a real PostgreSQL server: migrations from empty, writes, filters, labels."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from normalcy.apps.serve.history.schema import Base
from normalcy.apps.serve.history.store import HistoryFilter, HistoryStore, HistoryUnavailable, database_url

T0 = datetime(2026, 1, 1, 8, 0, tzinfo=UTC)



@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "sqlite":
        s = HistoryStore(tmp_path / "h.sqlite")
    else:
        s = HistoryStore(request.getfixturevalue("postgres").create_database(), media_dir=tmp_path / "files")
    yield s
    s.dispose()


def record(i: int, **kw) -> dict:
    """A scored-image record like the service makes (p-values spread over (0, 1])."""
    p = (i % 20 + 1) / 21
    rec = {"uid": uuid.uuid4().hex, "created_at": (T0 + timedelta(minutes=i)).isoformat(), "request_id": f"r{i // 4}",
           "model_id": "m" * 64, "model_name": "patchcore", "model_version": "0.1.0", "server_version": "0.1.0",
           "filename": f"img{i:03d}.png", "input_sha256": f"{i:064x}", "input_bytes": 1000 + i, "format": "PNG",
           "width": 64, "height": 48, "status": "ok", "error": "", "score": 1 - p, "p_value": p, "alpha": 0.1,
           "is_anomaly": p <= 0.1, "severity": "anomalous" if p <= 0.1 else "normal", "severe_threshold": 0.9,
           "defect_area": 12 if p <= 0.1 else 0, "regions": [{"box": [1, 2, 3, 4], "area": 4}] if p <= 0.1 else [],
           "brightness": 0.5, "sharpness": 0.01}
    return rec | kw


def test_database_url_forms(tmp_path):
    assert database_url(tmp_path / "a.sqlite") == f"sqlite:///{tmp_path}/a.sqlite"
    assert database_url("postgresql+psycopg://u:pw@h:5432/db") == "postgresql+psycopg://u:pw@h:5432/db"
    assert HistoryStore("postgresql+psycopg://u:secret@127.0.0.1:1/db").display_url.count("secret") == 0


def test_migrations_from_empty_match_the_models(store):
    """Alembic builds exactly the tables the ORM declares (no drift between migration and models)."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    assert store.revision() == ""
    assert store.migrate() == "0002"
    assert store.migrate() == "0002"  # idempotent
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_insert_is_idempotent_and_query_pages(store):
    store.migrate()
    recs = [record(i) for i in range(45)]
    assert store.insert(recs) == 45
    assert store.insert(recs[:10] + [record(99)]) == 1  # replayed records are skipped
    page = store.query(limit=20)
    assert page["total"] == 46 and len(page["items"]) == 20
    first = page["items"][0]
    assert first["filename"] == "img099.png" and first["created_at"].endswith("Z") and first["label"] is None
    assert first["regions"] == recs[0]["regions"] or first["regions"] == []
    seen = [it["id"] for it in page["items"]]
    while page["next_before"] is not None:
        page = store.query(limit=20, before=page["next_before"])
        seen += [it["id"] for it in page["items"]]
    assert len(seen) == len(set(seen)) == 46 and seen == sorted(seen, reverse=True)


def test_filters_time_decision_severity_model_and_alpha(store):
    store.migrate()
    store.insert([record(i) for i in range(40)] + [record(40, status="error", error="corrupt PNG", score=None,
                                                           p_value=None, is_anomaly=None, severity=None)])
    n = lambda **kw: store.query(HistoryFilter(**kw))["total"]  # noqa: E731
    assert n() == 41
    assert n(decision="error") == 1
    assert n(decision="flagged") == 4 and n(decision="passed") == 36  # stored decision: p <= 0.1 (2 of 20, x2)
    assert n(decision="flagged", alpha=0.5) == 20  # re-decided at alpha 0.5: p <= 10/21
    assert n(severity="anomalous") == 4
    assert n(severity="severe", alpha=0.1) == 4 and n(severity="anomalous", alpha=0.1) == 0  # scores >= 0.9
    assert n(severity="suspicious", alpha=0.1) == 16  # 0.1 < p <= 0.5: p in 3/21..10/21, x2
    assert n(severity="severe", alpha=0.05) == 2  # p = 1/21 -> score 20/21 >= 0.9
    assert n(since=T0 + timedelta(minutes=10), until=T0 + timedelta(minutes=20)) == 10
    paris = timezone(timedelta(hours=1))  # the same instants written in another time zone select the same rows
    since, until = (T0 + timedelta(minutes=10)).astimezone(paris), (T0 + timedelta(minutes=20)).astimezone(paris)
    assert n(since=since, until=until) == 10
    assert n(model_id="m" * 64) == 41 and n(model_id="other") == 0
    assert store.models()[0]["count"] == 41


def test_labels_confirm_overrule_and_confirmed(store):
    store.migrate()
    store.insert([record(i) for i in range(4)])
    items = {it["filename"]: it for it in store.query()["items"]}
    flagged = items["img000.png"]  # p = 1/21 <= 0.1: flagged
    passed = items["img003.png"]
    assert store.add_label(flagged["id"], "anomaly", "ana")["verdict"] == "confirm"
    lab = store.add_label(passed["id"], "anomaly", " bob ", note="scratch at left")
    assert lab["verdict"] == "overrule" and lab["who"] == "bob" and lab["at"].endswith("Z")
    store.add_label(passed["id"], "normal", "carol")  # the latest label counts
    got = store.get(passed["id"])
    assert got["label"]["label"] == "normal" and [x["who"] for x in got["labels"]] == ["bob", "carol"]
    assert [r["filename"] for r in store.confirmed("normal")] == ["img003.png"]
    assert [r["filename"] for r in store.confirmed("anomaly")] == ["img000.png"]
    with pytest.raises(KeyError):
        store.add_label(10**6, "normal", "x")
    with pytest.raises(ValueError, match="label must be"):
        store.add_label(flagged["id"], "maybe", "x")


def test_unreachable_database_raises_history_unavailable():
    s = HistoryStore("postgresql+psycopg://nobody@127.0.0.1:1/none", connect_timeout=1)
    with pytest.raises(HistoryUnavailable, match="127.0.0.1:1"):
        s.ping()
