"""HTTP API of `normalcy serve` through FastAPI's TestClient: decisions, pictures, every limit, queueing."""

from __future__ import annotations

import base64
import io
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from normalcy.apps.serve import ServeSettings, create_app  # noqa: E402
from normalcy.calibration.conformal import conformal_p_values  # noqa: E402
from normalcy.detectors.image.patchcore import DEFAULT_BACKBONE  # noqa: E402
from tests.test_serve_helpers import defect_png, model_file, normal_png, png_bytes  # noqa: E402


@pytest.fixture(scope="session")
def model_path(tmp_path_factory):
    return model_file(tmp_path_factory.mktemp("serve-model"))


@pytest.fixture(scope="module")
def client(model_path):
    with TestClient(create_app(ServeSettings(model_path=model_path))) as c:
        yield c


def limited_client(model_path, **limits) -> TestClient:
    """A client on an app with some limits lowered."""
    return TestClient(create_app(ServeSettings(model_path=model_path, **limits)))


def upload(*named: tuple[str, bytes]) -> list:
    return [("files", (name, data, "application/octet-stream")) for name, data in named]


def decode_data_url(url: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert url.startswith(prefix)
    img = Image.open(io.BytesIO(base64.b64decode(url[len(prefix):])))
    img.load()
    assert img.format == "PNG"
    return img


def test_health_and_model(client):
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["model_loaded"] is True
    assert h["queue"]["capacity"] == h["queue"]["workers"] + h["queue"]["queue_size"]
    m = client.get("/model").json()
    assert m["detector"] == "patchcore" and m["image_size"] == 64
    assert m["backbone"]["name"] == DEFAULT_BACKBONE and len(m["backbone"]["weights_sha256"]) == 64
    assert m["default_alpha"] == 0.2 and m["calibration"]["method"] == "holdout"
    cal = m["calibration"]
    assert cal["n"] == len(cal["scores"]) == 10 and cal["scores"] == sorted(cal["scores"])
    assert cal["min_reachable_alpha"] == pytest.approx(1 / 11)
    assert m["model_file"] == "serve-test.normalcy"  # a name, never the server's directory
    assert m["limits"]["max_files"] == 16 and m["created"] and m["normalcy_version"]


def test_predict_normal_and_defect(client):
    r = client.post("/predict", files=upload(("good.png", normal_png()), ("bad.png", defect_png())))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["n_ok"] == 2 and body["n_error"] == 0 and body["alpha"] == 0.2
    good, bad = body["results"]
    assert (good["filename"], bad["filename"]) == ("good.png", "bad.png")
    assert bad["score"] > good["score"]
    assert bad["is_anomaly"] and not good["is_anomaly"]
    assert bad["severity"] in ("anomalous", "severe")
    assert good["severity"] in ("normal", "suspicious")  # at alpha 0.2 every p <= 5·alpha = 1 is "suspicious"
    for res in (good, bad):
        assert res["status"] == "ok" and res["format"] == "PNG" and (res["width"], res["height"]) == (64, 64)
        overlay, heat, mask = (decode_data_url(res[k]) for k in ("overlay", "heatmap", "mask"))
        assert overlay.size == heat.size == mask.size == (64, 64)
        assert overlay.mode == "RGB" and heat.mode == "RGBA"
    assert bad["regions"] and bad["defect_area"] > 0 and len(bad["regions"][0]["box"]) == 4
    assert np.asarray(decode_data_url(bad["mask"])).sum() == bad["defect_area"]
    assert good["regions"] == [] and good["defect_area"] == 0


def test_page_can_recompute_decisions_from_model_scores(client):
    """The raw score plus GET /model calibration scores reproduce the server's p-value (client-side re-deciding)."""
    cal = np.array(client.get("/model").json()["calibration"]["scores"])
    res = client.post("/predict", files=upload(("a.png", normal_png(7)), ("b.png", defect_png(8)))).json()["results"]
    for r in res:
        assert conformal_p_values(cal, np.array([r["score"]]))[0] == pytest.approx(r["p_value"])


def test_alpha_per_request_changes_decisions(client):
    files = upload(("bad.png", defect_png()))
    loose = client.post("/predict", params={"alpha": 0.5}, files=files).json()
    strict = client.post("/predict", params={"alpha": 0.05}, files=files).json()
    assert loose["alpha"] == 0.5 and strict["alpha"] == 0.05
    assert loose["results"][0]["is_anomaly"] is True and loose["results"][0]["regions"]
    assert strict["results"][0]["is_anomaly"] is False  # below 1/(n+1): nothing can be flagged
    assert strict["results"][0]["regions"] == [] and strict["score_threshold"] is None
    assert loose["results"][0]["score"] == strict["results"][0]["score"]
    as_form = client.post("/predict", data={"alpha": "0.05"}, files=files).json()
    assert as_form["alpha"] == 0.05 and as_form["results"][0]["is_anomaly"] is False
    assert client.post("/predict", params={"alpha": 1.5}, files=files).status_code == 422
    assert client.post("/predict", params={"pixel_fpr": 0}, files=files).status_code == 422


def test_pictures_can_be_left_out(client):
    res = client.post("/predict", params={"pictures": False}, files=upload(("a.png", normal_png()))).json()
    assert res["results"][0]["score"] is not None
    assert res["results"][0]["overlay"] is None and res["results"][0]["mask"] is None


def test_corrupt_image_in_batch_gets_its_own_error(client):
    truncated = normal_png(3)[:150]
    r = client.post("/predict", files=upload(("a.png", normal_png(1)), ("broken.png", truncated),
                                              ("c.png", defect_png(2))))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["n_ok"] == 2 and body["n_error"] == 1
    a, broken, c = body["results"]
    assert a["status"] == c["status"] == "ok" and c["score"] > a["score"]
    assert broken["status"] == "error" and broken["filename"] == "broken.png" and broken["score"] is None
    assert "truncated" in broken["error"] or "corrupt" in broken["error"]


def test_batches_are_scored_in_chunks_and_keep_upload_order(model_path):
    files = [(f"{i}.png", normal_png(i) if i != 2 else b"\x89PNG\r\n\x1a\n" + b"\x00" * 30) for i in range(5)]
    with limited_client(model_path, chunk_size=2, max_pixels=64 * 64 * 3) as c:
        body = c.post("/predict", files=upload(*files)).json()
    assert [r["filename"] for r in body["results"]] == [f"{i}.png" for i in range(5)]
    assert [r["status"] for r in body["results"]] == ["ok", "ok", "error", "ok", "ok"]
    assert [r["index"] for r in body["results"]] == list(range(5))


def test_too_many_files(model_path):
    with limited_client(model_path, max_files=2) as c:
        r = c.post("/predict", files=upload(*[(f"{i}.png", normal_png(i)) for i in range(3)]))
    assert r.status_code == 413
    assert "max_files=2" in r.json()["detail"] and "3 files" in r.json()["detail"]


def test_file_too_large(model_path):
    data = normal_png()
    with limited_client(model_path, max_file_bytes=len(data) - 1) as c:
        r = c.post("/predict", files=upload(("big.png", data)))
    assert r.status_code == 413
    detail = r.json()["detail"]
    assert f"max_file_bytes={len(data) - 1}" in detail and str(len(data)) in detail and "big.png" in detail


def test_request_too_large(model_path):
    data = normal_png()
    with limited_client(model_path, max_request_bytes=3 * len(data)) as c:
        r = c.post("/predict", files=upload(*[(f"{i}.png", data) for i in range(4)]))
        assert r.status_code == 413
        assert f"max_request_bytes={3 * len(data)}" in r.json()["detail"]

        def chunks():  # no Content-Length: the limit is enforced while the body streams in
            yield b"x" * (2 * len(data))
            yield b"x" * (2 * len(data))

        r = c.post("/predict", content=chunks(), headers={"content-type": "multipart/form-data; boundary=zz"})
        assert r.status_code == 413 and "max_request_bytes" in r.json()["detail"]


def test_too_many_pixels_refused_before_decoding(client, model_path):
    bomb = png_bytes(Image.new("1", (12_000, 10_000)))  # 120 megapixels in a few kilobytes
    assert len(bomb) < 100_000
    r = client.post("/predict", files=upload(("bomb.png", bomb)))
    assert r.status_code == 413
    assert "max_pixels=40000000" in r.json()["detail"] and "12000x10000" in r.json()["detail"]
    with limited_client(model_path, max_pixels=64 * 63) as c:
        r = c.post("/predict", files=upload(("ok-size.png", normal_png())))
    assert r.status_code == 413 and "64x64 = 4096 pixels" in r.json()["detail"]


@pytest.mark.parametrize("content", [b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj", b"", b"GIF89a" + b"\x00" * 40])
def test_type_is_checked_by_content_not_name(client, content):
    r = client.post("/predict", files=upload(("good.png", normal_png()), ("scan.png", content)))
    assert r.status_code == 415
    assert "'scan.png'" in r.json()["detail"] and "PNG, JPEG" in r.json()["detail"]


def test_real_image_with_wrong_name_is_accepted(client):
    jpeg = png_bytes(Image.open(io.BytesIO(normal_png())), fmt="JPEG")
    res = client.post("/predict", files=upload(("photo.txt", jpeg))).json()["results"][0]
    assert res["status"] == "ok" and res["format"] == "JPEG"


def test_concurrent_requests_all_answered(client):
    def one(i: int) -> int:
        return client.post("/predict", files=upload((f"{i}.png", normal_png(i)))).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        codes = list(pool.map(one, range(12)))
    assert codes == [200] * 12
    assert client.get("/health").json()["queue"]["pending"] == 0


def test_full_queue_answers_503(model_path):
    entered, release = threading.Event(), threading.Event()
    with limited_client(model_path, queue_size=0, workers=1) as c:
        service = c.app.state.service
        real_predict = service.detector.predict

        def slow_predict(*args, **kwargs):
            entered.set()
            assert release.wait(30)
            return real_predict(*args, **kwargs)

        service.detector.predict = slow_predict
        with ThreadPoolExecutor(max_workers=1) as pool:
            first = pool.submit(c.post, "/predict", files=upload(("a.png", normal_png())))
            assert entered.wait(30)
            busy = c.post("/predict", files=upload(("b.png", normal_png())))
            release.set()
            assert first.result().status_code == 200
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
        assert "queue_size=0" in busy.json()["detail"]
        health = c.get("/health").json()["queue"]
        assert health["rejected"] == 1 and health["pending"] == 0
        del service.detector.predict
        assert c.post("/predict", files=upload(("c.png", normal_png()))).status_code == 200


def test_page_and_assets_are_served_from_the_package(client):
    page = client.get("/")
    assert page.status_code == 200 and "normalcy" in page.text and "/static/app.js" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "http" not in page.text.replace("http://www.w3.org/2000/svg", "")  # no CDN, nothing external
    assert client.get("/static/app.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/static/app.css").status_code == 200
    assert client.get("/static/serve-test.normalcy").status_code == 404
    assert client.get("/static/..%2Fapp.py").status_code == 404


def test_openapi_describes_every_result_field(client):
    schema = client.get("/openapi.json").json()["components"]["schemas"]
    for name in ("ImageResult", "PredictResponse", "ModelInfo", "Region", "Health"):
        props = schema[name]["properties"]
        missing = [k for k, v in props.items() if not v.get("description")]
        assert not missing, f"{name} fields without description: {missing}"


def test_cli_serve_reports_a_missing_model(tmp_path, capsys):
    from normalcy.apps.cli import EXIT_ERROR, main

    assert main(["serve", str(tmp_path / "missing.normalcy"), "--port", "1"]) == EXIT_ERROR
    assert "model file not found" in capsys.readouterr().err
