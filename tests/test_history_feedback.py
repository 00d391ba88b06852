"""Labels feed back: `serve --db --keep-images` keeps the uploads, `normalcy fit --from-db` trains on confirmed ones;
and an older history is migrated forward without losing rows."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
from fastapi.testclient import TestClient

from normalcy.apps.cli import main
from normalcy.apps.cli.fit import _from_db
from normalcy.apps.serve import ServeSettings, create_app
from normalcy.apps.serve.history.feedback import confirmed_images
from normalcy.apps.serve.history.store import HistoryStore
from tests.conftest import texture
from tests.test_history_store import record
from tests.test_serve_helpers import defect_png, model_file, normal_png, png_bytes


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return model_file(tmp_path_factory.mktemp("feedback-model"))


def upload(*named: tuple[str, bytes]) -> list:
    return [("files", (name, data, "application/octet-stream")) for name, data in named]


@pytest.fixture(scope="module")
def labelled_db(model_path, tmp_path_factory):
    """A history with kept images: two confirmed normal (one uploaded twice), one confirmed anomaly, one unlabelled."""
    db = tmp_path_factory.mktemp("feedback") / "h.sqlite"
    settings = ServeSettings(model_path=model_path, db=str(db), keep_images=True)
    with TestClient(create_app(settings)) as client:
        files = upload(("n1.png", normal_png(31)), ("n2.png", normal_png(32)), ("n1-again.png", normal_png(31)),
                       ("bad.png", defect_png(33)), ("n3.png", normal_png(34)))
        assert client.post("/predict", files=files).status_code == 200
        assert client.app.state.recorder.writer.flush(timeout=60)
        ids = {r["filename"]: r["id"] for r in client.get("/history").json()["items"]}
        for name, label in (("n1.png", "normal"), ("n2.png", "normal"), ("n1-again.png", "normal"),
                            ("bad.png", "anomaly")):
            assert client.post(f"/history/{ids[name]}/label", json={"label": label, "who": "qa"}).status_code == 200
    return db


def test_kept_images_of_confirmed_labels(labelled_db):
    normals, skipped = confirmed_images(labelled_db, "normal")
    assert len(normals) == 2 and skipped == []  # n1 uploaded twice is one image
    assert {p.read_bytes() for p in normals} == {normal_png(31), normal_png(32)}
    anomalies, _ = confirmed_images(labelled_db, "anomaly")
    assert [p.read_bytes() for p in anomalies] == [defect_png(33)]
    args = argparse.Namespace(from_db=str(labelled_db), history_dir=None, detector="semisup")
    train: list = []
    assert _from_db(args, train) == anomalies and train == normals


def test_fit_from_db_adds_confirmed_normals(labelled_db, tmp_path, capsys):
    folder = tmp_path / "good"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i in range(8):
        (folder / f"{i}.png").write_bytes(png_bytes(texture(rng)))
    out = tmp_path / "m.normalcy"
    argv = ["fit", str(folder), "-o", str(out), "--image-size", "64", "--alpha", "0.2", "--from-db", str(labelled_db)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "+ 2 confirmed-normal images" in text and "fitting patchcore on 10 normal images" in text
    assert out.is_file()


def test_images_not_kept_are_skipped_with_the_reason(model_path, tmp_path):
    db = tmp_path / "h.sqlite"
    with TestClient(create_app(ServeSettings(model_path=model_path, db=str(db)))) as client:
        assert client.post("/predict", files=upload(("a.png", normal_png(40)))).status_code == 200
        assert client.app.state.recorder.writer.flush(timeout=60)
        row = client.get("/history").json()["items"][0]
        assert row["input_path"] is None and row["thumb_path"]
        client.post(f"/history/{row['id']}/label", json={"label": "normal", "who": "qa"})
    normals, skipped = confirmed_images(db, "normal")
    assert normals == [] and "--keep-images" in skipped[0]


def test_upgrade_from_the_first_revision_keeps_rows(tmp_path):
    store = HistoryStore(tmp_path / "old.sqlite")
    assert store.migrate("0001") == "0001"
    with store.engine.begin() as conn:  # a row written by a server that only knew revision 0001
        conn.exec_driver_sql(
            "INSERT INTO inspections (uid, created_at, request_id, model_id, model_name, filename, status, error) "
            "VALUES ('u1', '2026-01-01 00:00:00', 'r', 'm', 'patchcore', 'old.png', 'ok', '')")
    assert store.migrate() == "0002"
    rows = store.query()["items"]
    assert [r["filename"] for r in rows] == ["old.png"] and rows[0]["input_path"] is None
    assert store.insert([record(1, input_path="ab/abc.png")]) == 1
