"""`normalcy serve --db`: every decision stored, listed, labelled and exported; drift; a database outage mid-run."""

from __future__ import annotations

import csv
import io
import time

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from normalcy.apps.serve import ServeSettings, create_app
from tests.test_serve_helpers import defect_png, model_file, normal_png


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return model_file(tmp_path_factory.mktemp("history-model"))


def upload(*named: tuple[str, bytes]) -> list:
    return [("files", (name, data, "application/octet-stream")) for name, data in named]


def flush(client: TestClient) -> None:
    assert client.app.state.recorder.writer.flush(timeout=60), client.get("/health").json()["history"]


def wait_for(cond, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


def test_decisions_are_stored_listed_labelled_and_exported(model_path, tmp_path):
    db = tmp_path / "inspections.sqlite"
    with TestClient(create_app(ServeSettings(model_path=model_path, db=str(db)))) as client:
        r = client.post("/predict", files=upload(("good.png", normal_png(1)), ("bad.png", defect_png(2)),
                                                 ("=HYPERLINK(evil).png", normal_png(3)),
                                                 ("broken.png", normal_png(4)[:60])),
                        headers={"X-Request-ID": "line-7/batch-42"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["request_id"] == "line-7/batch-42"
        assert all(len(res["inspection_uid"]) == 32 for res in body["results"])
        flush(client)

        page = client.get("/history").json()
        assert page["total"] == 4 and page["next_before"] is None
        rows = {row["filename"]: row for row in page["items"]}
        bad, good, broken = rows["bad.png"], rows["good.png"], rows["broken.png"]
        assert bad["is_anomaly"] is True and bad["severity"] in ("anomalous", "severe") and bad["regions"]
        assert good["is_anomaly"] is False and good["alpha"] == 0.2 and good["request_id"] == "line-7/batch-42"
        assert broken["status"] == "error" and "corrupt" in broken["error"] and len(broken["input_sha256"]) == 64
        assert bad["model_id"] == page["model_id"] and len(bad["model_id"]) == 64 and bad["model_name"] == "patchcore"
        assert bad["uid"] == body["results"][1]["inspection_uid"]
        assert 0 < good["brightness"] < 1 and good["sharpness"] > 0 and (good["width"], good["height"]) == (64, 64)

        thumb = client.get(f"/history/{good['id']}/thumb")
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
        assert Image.open(io.BytesIO(thumb.content)).size == (64, 64)  # never upscaled
        mask = client.get(f"/history/{bad['id']}/mask")
        assert mask.status_code == 200 and Image.open(io.BytesIO(mask.content)).mode == "1"
        assert client.get(f"/history/{good['id']}/mask").status_code == 404  # not flagged: no mask kept
        assert (db.parent / "inspections.sqlite.files" / good["thumb_path"]).is_file()

        n_flagged = sum(row["is_anomaly"] is True for row in page["items"])  # at alpha 0.2 a normal one may be too
        assert client.get("/history", params={"decision": "flagged"}).json()["total"] == n_flagged >= 1
        assert client.get("/history", params={"decision": "error"}).json()["total"] == 1
        assert client.get("/history", params={"limit": 2}).json()["next_before"] is not None
        lab = client.post(f"/history/{bad['id']}/label", json={"label": "anomaly", "who": "ana"}).json()
        assert lab["verdict"] == "confirm" and lab["who"] == "ana"
        lab = client.post(f"/history/{good['id']}/label",
                          json={"label": "anomaly", "who": "bob", "note": "faint crack"}).json()
        assert lab["verdict"] == "overrule"
        assert client.post(f"/history/{broken['id']}/label", json={"label": "normal", "who": "x"}).status_code == 409
        assert client.post("/history/999999/label", json={"label": "normal", "who": "x"}).status_code == 404
        assert client.post(f"/history/{good['id']}/label", json={"label": "bad", "who": "x"}).status_code == 422
        assert client.get(f"/history/{good['id']}").json()["labels"][0]["note"] == "faint crack"

        exp = client.get("/history.csv")
        assert exp.status_code == 200 and exp.headers["content-type"].startswith("text/csv")
        table = list(csv.DictReader(io.StringIO(exp.text)))
        assert [t["filename"] for t in table] == ["good.png", "bad.png", "'=HYPERLINK(evil).png", "broken.png"]
        assert table[0]["label"] == "anomaly" and table[0]["label_verdict"] == "overrule"
        assert table[1]["is_anomaly"] == "true" and table[1]["boxes"].startswith("[[")

        health = client.get("/health").json()
        assert health["history"]["state"] == "ok" and health["history"]["written"] == 4
        assert health["history"]["database"] == "sqlite" and health["history"]["spooled"] == 0
        assert health["history"]["name"] == "inspections.sqlite"  # the file name, never the server's folders
        drift = client.get("/drift").json()
        n_normal = sum(row["is_anomaly"] is False for row in page["items"])  # decided normal at the model's alpha
        assert drift["n"] == health["drift"]["n"] == n_normal >= 1
        assert drift["alarm"] is None and drift["threshold_log10"] > 0
        assert [s["name"] for s in drift["statistics"]] == ["score", "brightness", "sharpness"]

    # a restarted server keeps the history and rebuilds the drift monitor from it
    with TestClient(create_app(ServeSettings(model_path=model_path, db=str(db)))) as client:
        assert client.get("/history").json()["total"] == 4
        assert client.get("/drift").json()["n"] == n_normal


def test_without_db_there_is_no_history_but_drift_runs(model_path):
    with TestClient(create_app(ServeSettings(model_path=model_path))) as client:
        r = client.post("/predict", files=upload(("good.png", normal_png(5))))
        assert r.status_code == 200 and r.json()["results"][0].get("inspection_uid") is None
        missing = client.get("/history")
        assert missing.status_code == 404 and "--db" in missing.json()["detail"]
        assert client.get("/health").json()["history"] == {"enabled": False}
        assert client.get("/drift").json()["n"] == 1
        assert "db" not in client.get("/model").json()["limits"]


def test_postgres_stopped_mid_run_decisions_still_returned_and_nothing_lost(model_path, postgres, tmp_path):
    """The service keeps answering while PostgreSQL is down; /health shows the outage; the spool is replayed."""
    settings = ServeSettings(model_path=model_path, db=postgres.create_database(), history_dir=tmp_path / "files")
    with TestClient(create_app(settings)) as client:
        rec = client.app.state.recorder
        rec.writer.retry_s = 0.2
        first = client.post("/predict", files=upload(("a.png", normal_png(6)), ("b.png", defect_png(7))))
        assert first.status_code == 200
        flush(client)
        assert client.get("/health").json()["history"]["state"] == "ok"
        postgres.stop("immediate")
        try:
            for i in range(3):  # decisions keep coming back while the database is gone
                r = client.post("/predict", files=upload((f"down{i}.png", normal_png(10 + i)),
                                                         (f"bad{i}.png", defect_png(20 + i))))
                assert r.status_code == 200 and r.json()["n_ok"] == 2
            assert wait_for(lambda: client.get("/health").json()["history"]["state"] == "down")
            h = client.get("/health").json()["history"]
            assert h["down_since"] and h["last_error"] and h["database"] == "postgresql"
            assert wait_for(lambda: client.get("/health").json()["history"]["spooled"] == 6)
            listing = client.get("/history")
            assert listing.status_code == 503 and "unavailable" in listing.json()["detail"]
        finally:
            postgres.start()
        flush(client)
        h = client.get("/health").json()["history"]
        assert h["state"] == "ok" and h["spooled"] == 0 and h["replayed"] == 6
        names = sorted(row["filename"] for row in client.get("/history").json()["items"])
        assert names == ["a.png", "b.png", "bad0.png", "bad1.png", "bad2.png", "down0.png", "down1.png", "down2.png"]


def test_csv_cells_never_start_a_formula():
    from normalcy.apps.serve.history.routes import csv_cell

    assert [csv_cell(v) for v in ("=1+2", "+x", "-cmd", "@SUM(A1)", "\tx", "\rx", "plain.png")] == [
        "'=1+2", "'+x", "'-cmd", "'@SUM(A1)", "'\tx", "'\rx", "plain.png"]
    assert [csv_cell(v) for v in (-0.5, 3, True, None)] == ["-0.5", "3", "true", ""]  # numbers stay numbers


def test_database_down_at_start_up_the_server_starts_and_spools(model_path, tmp_path):
    url = "postgresql+psycopg://nobody:pw@127.0.0.1:1/none"  # nothing listens on port 1
    with TestClient(create_app(ServeSettings(model_path=model_path, db=url, history_dir=tmp_path))) as client:
        r = client.post("/predict", files=upload(("a.png", normal_png(50))))
        assert r.status_code == 200 and r.json()["n_ok"] == 1
        assert wait_for(lambda: client.get("/health").json()["history"]["spooled"] == 1)
        h = client.get("/health").json()["history"]
        assert h["state"] == "down" and "pw" not in h["name"] and "pw" not in h["last_error"]
        assert client.get("/history").status_code == 503
    assert (tmp_path / "spool").is_dir()  # kept for the next start
