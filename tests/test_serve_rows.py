"""`normalcy serve` with a table, text or series model: JSON in, one result per row / text / timestamp."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from normalcy.apps.serve import ServeSettings, create_app  # noqa: E402
from normalcy.detectors.series import SeriesDetector  # noqa: E402
from normalcy.detectors.text import TextDetector  # noqa: E402
from normalcy.detectors.vector.knn import KNN  # noqa: E402


def test_table_model_from_file(tmp_path):
    det = KNN().fit(np.random.default_rng(0).normal(size=(200, 2)))
    det.input_schema_ = {"modality": "table", "columns": ["a", "b"], "categorical": []}
    path = det.save(tmp_path / "t.normalcy")
    with TestClient(create_app(ServeSettings(model_path=path))) as client:
        assert client.get("/model").json()["input_schema"]["columns"] == ["a", "b"]
        r = client.post("/predict", json={"rows": [[0, 0], [9, 9], [1], {"a": 0.1, "b": 0.2}, ["x", 1]]})
        assert r.status_code == 200
        res = r.json()["results"]
        assert [x["status"] for x in res] == ["ok", "ok", "error", "ok", "error"]
        assert res[1]["is_anomaly"] is True and res[0]["is_anomaly"] is False
        assert res[2]["is_anomaly"] is None and res[2]["severity"] == "error"
        assert client.post("/predict", json={"texts": ["a"]}).status_code == 422


def test_text_and_series_models():
    texts = [f"meeting at {i % 9} in room {i % 5}" for i in range(120)]
    with TestClient(create_app(ServeSettings(), detector=TextDetector().fit(texts))) as client:
        res = client.post("/predict", json={"texts": ["meeting at 3 in room 2", "", "WIN CASH NOW!!! 0800"]}).json()
        assert [x["status"] for x in res["results"]] == ["ok", "error", "ok"]
        assert res["results"][2]["is_anomaly"] is True
    t = np.arange(400)
    series = np.c_[np.sin(t / 8), np.cos(t / 8)] + np.random.default_rng(0).normal(scale=0.05, size=(400, 2))
    det = SeriesDetector(window=16).fit(series)
    with TestClient(create_app(ServeSettings(), detector=det)) as client:
        body = {"series": series[:100].tolist()}
        res = client.post("/predict", json=body).json()
        assert res["n_ok"] == 100 and len(res["results"]) == 100
