"""Explanations: region geometry on known blobs, the template sentence, gallery matching, the fake narrator."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from normalcy.calibration.conformal import PIXEL_FPR_GRID, Calibration
from normalcy.errors import ParameterError
from normalcy.explain.narrator import Narrator
from normalcy.explain.regions import describe_regions, pixel_p_values, regions_with_masks
from normalcy.explain.summary import add_nearest_types, attach, position_word, sentence, size_word
from tests.conftest import texture


def uniform_calibration() -> Calibration:
    """Normal pixels uniform on [0, 1]: the value exceeded by a fraction f of them is 1 - f."""
    return Calibration(np.zeros(5), pixel_fpr_levels=PIXEL_FPR_GRID.copy(), pixel_quantiles=1.0 - PIXEL_FPR_GRID)


def two_blobs() -> tuple[np.ndarray, np.ndarray]:
    mask = np.zeros((100, 200), dtype=bool)
    mask[10:20, 30:50] = True  # 10×20 = 200 px, top-left area
    mask[60:63, 150:153] = True  # 3×3 = 9 px, bottom-right
    amap = np.zeros(mask.shape, dtype=np.float32)
    amap[10:20, 30:50] = 0.5
    amap[15, 40] = 0.9
    amap[60:63, 150:153] = 2.5
    return mask, amap


def test_regions_of_known_blobs_are_exact():
    mask, amap = two_blobs()
    regions = describe_regions(mask, amap, uniform_calibration())
    small, big = regions  # sorted by peak: the 9-px blob peaks at 2.5
    assert big["box"] == [30, 10, 50, 20] and big["area"] == 200
    assert big["centroid"] == [39.5, 14.5] and big["area_fraction"] == 200 / 20000
    assert big["peak"] == pytest.approx(0.9) and big["mean"] == pytest.approx((199 * 0.5 + 0.9) / 200)
    assert small["box"] == [150, 60, 153, 63] and small["area"] == 9 and small["centroid"] == [151.0, 61.0]
    # uniform normal pixels: 10 % of them score >= 0.9; the 2.5 blob is beyond 1 + (1 - 0.5): severe
    assert big["p_value"] == pytest.approx(0.1, rel=1e-3) and big["severity"] == "anomalous"
    assert small["p_value"] == pytest.approx(1e-6) and small["severity"] == "severe"


def test_region_masks_follow_region_order_and_geometry_without_map():
    mask, amap = two_blobs()
    regions, masks = regions_with_masks(mask, amap, uniform_calibration())
    assert [int(m.sum()) for m in masks] == [r["area"] for r in regions] == [9, 200]
    plain = describe_regions(mask)
    assert [r["area"] for r in plain] == [200, 9] and "peak" not in plain[0]
    assert describe_regions(np.zeros((4, 4), bool), np.zeros((4, 4))) == []


def test_pixel_p_values_are_monotone_and_nan_without_pixel_calibration():
    p = pixel_p_values(uniform_calibration(), np.array([-1.0, 0.5, 0.99, 5.0]))
    assert p[0] == pytest.approx(1.0) and p[1] == pytest.approx(0.5, rel=1e-3) and p[3] == pytest.approx(1e-6)
    assert np.all(np.diff(p) <= 0)
    assert np.isnan(pixel_p_values(Calibration(np.zeros(3)), np.array([1.0]))).all()


def test_words_for_position_and_size():
    shape = (300, 300)
    assert position_word((10, 10), shape) == "top-left" and position_word((150, 150), shape) == "centre"
    assert position_word((290, 150), shape) == "right" and position_word((150, 299), shape) == "bottom"
    assert [size_word(f) for f in (0.001, 0.01, 0.031)] == ["small", "medium", "large"]


def test_sentence_names_count_place_size_severity_and_type():
    expl = {"is_anomaly": True, "p_value": 0.004, "severity": "severe", "shape": [100, 100], "regions": [
        {"centroid": [10, 10], "area_fraction": 0.031, "p_value": 0.002, "severity": "severe", "peak": 3.0},
        {"centroid": [50, 90], "area_fraction": 0.002, "p_value": 0.01, "severity": "anomalous", "peak": 2.0}]}
    text = sentence(expl)
    assert text.startswith("2 anomalous regions (image p = 0.004, severe): a large severe one at the top-left "
                           "(3.1 % of the image, peak pixel p = 0.002)")
    assert "a small one at the bottom (0.2 %, peak pixel p = 0.010)" in text
    add_nearest_types(expl, [("crack", 0.83), None])
    assert expl["nearest_type"] == {"type": "crack", "similarity": 0.83}
    assert "looks like crack (0.83)" in expl["summary"]
    assert sentence({"is_anomaly": False, "p_value": 0.43, "severity": "normal"}) == "Looks normal (image p = 0.430)."
    assert sentence({"is_anomaly": False, "p_value": 0.03, "severity": "suspicious"}).startswith("Not flagged, but")


def test_predictions_carry_regions_and_summary(fitted_small):
    det, bad, _ = fitted_small
    pred = det.predict([bad], alpha=0.1)[0]
    assert pred.explanation is None  # the library decides; callers (predict, serve) attach explanations
    pred = attach(pred, det.calibration_)
    row = pred.to_dict()
    assert pred.is_anomaly and row["regions"] and row["regions"][0]["box"]
    assert row["explanation"].startswith(f"{len(row['regions'])} anomalous region")
    json.dumps(row)  # JSON-ready


# ---- gallery -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fitted_small():
    """PatchCore at 64 px on stripe textures, plus one red-square and one dark-bar defect image."""
    from normalcy.detectors.image.patchcore import PatchCore

    rng = np.random.default_rng(0)
    det = PatchCore(image_size=64, progress=False, alpha=0.1).fit([texture(rng) for _ in range(20)])
    return det, red_square(texture(rng), 20, 20), dark_bar(texture(rng), 40)


def red_square(img: np.ndarray, y: int, x: int) -> np.ndarray:
    out = img.copy()
    out[y : y + 12, x : x + 12] = (255, 30, 30)
    return out


def dark_bar(img: np.ndarray, y: int) -> np.ndarray:
    out = img.copy()
    out[y : y + 3, 8:56] = (0, 0, 0)
    return out


def test_gallery_names_the_nearest_defect_type(fitted_small, tmp_path):
    from normalcy.explain.gallery import DefectGallery

    det, _, _ = fitted_small
    rng = np.random.default_rng(5)
    for kind in ("red", "bar"):
        (tmp_path / kind).mkdir()
    for i in range(3):
        Image.fromarray(red_square(texture(rng), 10 + 10 * i, 30 - 10 * i)).save(tmp_path / "red" / f"{i}.png")
        Image.fromarray(dark_bar(texture(rng), 12 + 15 * i)).save(tmp_path / "bar" / f"{i}.png")
    gallery = DefectGallery.from_folder(tmp_path, det)
    assert sorted(set(gallery.types)) == ["bar", "red"] and gallery.reference == "nearest"
    queries = [red_square(texture(rng), 35, 8), dark_bar(texture(rng), 25)]
    preds = gallery.annotate(det, queries, det.predict(queries, alpha=0.1))
    types = [p.explanation["nearest_type"]["type"] for p in preds]
    assert types == ["red", "bar"]
    assert all(0.0 < p.explanation["nearest_type"]["similarity"] <= 1.0 for p in preds)
    assert "looks like red" in preds[0].explanation["summary"]


# ---- narrator against a fake OpenAI-compatible server ----------------------------------------------------
class FakeChat(BaseHTTPRequestHandler):
    """POST /v1/chat/completions: reply, sleep, or fail depending on the requested model name."""

    received: list = []

    def do_POST(self):  # noqa: N802 (http.server API)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeChat.received.append((self.path, body))
        if body["model"] == "slow":
            time.sleep(1.5)
        if body["model"] == "broken":
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b"internal error")
            return
        reply = {"choices": [{"message": {"role": "assistant", "content": " A red square stain. "}}]}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):  # keep test output quiet
        pass


@pytest.fixture(scope="module")
def fake_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeChat)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_narrator_reply_is_attached_with_images_and_explanation(fake_server):
    img = np.zeros((40, 60, 3), dtype=np.uint8)
    expl = {"summary": "1 anomalous region", "regions": []}
    out = Narrator(fake_server, "ok").narrate(img, Image.fromarray(img), expl)
    assert out["reply"] == "A red square stain." and out["error"] == ""
    path, body = FakeChat.received[-1]
    assert path == "/v1/chat/completions" and body["model"] == "ok"
    content = body["messages"][-1]["content"]
    urls = [c["image_url"]["url"] for c in content if c["type"] == "image_url"]
    assert len(urls) == 2 and all(u.startswith("data:image/png;base64,") for u in urls)
    assert "1 anomalous region" in content[0]["text"]


def test_narrator_timeout_and_http_error_are_recorded_not_raised(fake_server):
    img = np.zeros((8, 8, 3), dtype=np.uint8)
    expl = {"summary": "kept", "regions": []}
    slow = Narrator(fake_server, "slow", timeout=0.3).narrate(img, img, expl)
    assert slow["reply"] is None and slow["error"].startswith("timeout")
    broken = Narrator(fake_server, "broken").narrate(img, img, expl)
    assert broken["reply"] is None and broken["error"].startswith("HTTP 500")
    refused = Narrator("http://127.0.0.1:9/v1", "x", timeout=1).narrate(img, img, expl)
    assert refused["reply"] is None and refused["error"]
    assert expl == {"summary": "kept", "regions": []}


def test_narrator_rejects_bad_settings():
    with pytest.raises(ParameterError):
        Narrator("ftp://x", "m")
    with pytest.raises(ParameterError):
        Narrator("http://127.0.0.1:1/v1", "")


def test_predict_cli_writes_regions_summary_and_narration(fitted_small, fake_server, tmp_path):
    from normalcy.apps.cli import EXIT_OK, main

    det, bad, _ = fitted_small
    model = det.save(tmp_path / "m.normalcy")
    Image.fromarray(bad).save(tmp_path / "bad.png")
    out = tmp_path / "out"
    code = main(["predict", str(model), str(tmp_path / "bad.png"), "-o", str(out), "--alpha", "0.1",
                 "--narrator-url", fake_server, "--narrator-model", "ok"])
    assert code == EXIT_OK
    row = json.loads((out / "results.jsonl").read_text().splitlines()[0])
    assert row["is_anomaly"] and row["regions"] and row["boxes"] == [r["box"] for r in row["regions"]]
    assert row["explanation"].startswith(f"{len(row['regions'])} anomalous region")
    assert row["narrator"]["reply"] == "A red square stain."


def test_service_schema_keeps_region_details_and_summary(fitted_small):
    pytest.importorskip("pydantic")
    from normalcy.apps.serve.schemas import ImageResult

    det, bad, _ = fitted_small
    row = attach(det.predict([bad], alpha=0.1)[0], det.calibration_).to_dict()
    row.pop("path")
    shown = ImageResult(index=0, filename="bad.png", **row).model_dump()
    assert shown["explanation"] == row["explanation"]
    assert shown["regions"][0]["centroid"] == row["regions"][0]["centroid"]
    assert shown["regions"][0]["severity"] in ("anomalous", "severe")
