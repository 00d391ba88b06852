"""Issue 20: hostile and broken inputs never lose rows, never give a silent wrong answer, never run anything."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import stat
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from normalcy.apps.results import NOT_SCORED, csv_safe, predict_to_folder
from normalcy.calibration.conformal import Calibration
from normalcy.data import read_image
from normalcy.detectors.base import Prediction
from normalcy.errors import CorruptImageError, DataError, ModelFileError, ParameterError

RNG = np.random.default_rng(0)


def png(path: Path, size: int = 16, seed: int = 0) -> Path:
    arr = (np.random.default_rng(seed).random((size, size, 3)) * 255).astype(np.uint8)
    Image.fromarray(arr).save(path)
    return path


def read_rows(out: Path) -> tuple[list[dict], list[dict]]:
    with open(out / "results.csv", newline="", encoding="utf-8") as f:
        rows_csv = list(csv.DictReader(f))
    rows_json = [json.loads(line) for line in (out / "results.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows_csv) == len(rows_json)
    return rows_csv, rows_json


class FakeDetector:
    """Scores images by mean brightness without a backbone; records the batch sizes it was given."""

    name = "fake"
    kind = "image"

    def __init__(self, min_batch: int = 1, hook=None) -> None:
        self.calibration_ = Calibration(np.linspace(0.0, 1.0, 99), method="holdout")
        self.progress = False
        self.min_batch = min_batch
        self.batches: list[int] = []
        self.hook = hook

    def predict(self, images, alpha=None, pixel_fpr=None):
        self.batches.append(len(images))
        if self.hook:
            self.hook(len(self.batches))
        if len(images) < self.min_batch:
            raise DataError(f"needs a batch of at least {self.min_batch} images, got {len(images)}")
        return [Prediction(score=float(im.mean()) / 255, p_value=0.5) for im in images]


@pytest.fixture(scope="module")
def fitted():
    from normalcy.detectors.image.patchcore import PatchCore

    rng = np.random.default_rng(0)
    imgs = [(rng.random((32, 32, 3)) * 255).astype(np.uint8) for _ in range(12)]
    return PatchCore(image_size=32, progress=False, alpha=0.1).fit(imgs)


# ---- rows never lost ------------------------------------------------------------------------------------------
def test_long_and_non_utf8_names_keep_every_row(fitted, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    png(folder / ("a" * 250 + ".png"))
    png(Path(os.fsdecode(bytes(folder) + b"/bad\xff\xfe.png")))
    png(folder / "=cmd|' -C calc'!A0.png")
    n, failed = predict_to_folder(fitted, [folder], tmp_path / "out")
    rows_csv, rows_json = read_rows(tmp_path / "out")
    assert (n, failed) == (3, 0) and len(rows_csv) == 3
    assert [r["path"] for r in rows_csv] == [r["path"] for r in rows_json]
    assert any("\\xff\\xfe" in r["path"] for r in rows_json)
    for r in rows_json:
        assert (tmp_path / "out" / r["overlay"]).is_file() and len(Path(r["overlay"]).name) < 100


def test_file_deleted_mid_run_is_one_error_row_and_images_are_read_once(tmp_path):
    files = [png(tmp_path / f"{i:02d}.png", seed=i) for i in range(6)]

    def delete_later(batch_no):
        if batch_no == 1:
            files[4].unlink()  # not read yet: becomes an error row, the run goes on

    det = FakeDetector(hook=delete_later)
    n, failed = predict_to_folder(det, files, tmp_path / "out", batch=2, write_images=False)
    rows_csv, _ = read_rows(tmp_path / "out")
    assert (n, failed) == (6, 1)
    assert rows_csv[4]["status"] == "error" and "not found" in rows_csv[4]["error"]


def test_scored_pixels_are_the_overlay_pixels_even_if_the_file_vanishes(fitted, tmp_path):
    files = [png(tmp_path / f"{i}.png", size=32, seed=i) for i in range(3)]
    real = fitted.predict

    def predict_then_delete(images, **kw):
        out = real(images, **kw)
        for f in files:
            f.unlink(missing_ok=True)  # overlays must not re-read the files
        return out

    fitted.predict = predict_then_delete
    try:
        n, failed = predict_to_folder(fitted, files, tmp_path / "out")
    finally:
        del fitted.predict
    assert (n, failed) == (3, 0)
    assert all((tmp_path / "out" / r["overlay"]).is_file() for r in read_rows(tmp_path / "out")[1])


def test_sigterm_finishes_the_batch_and_records_the_rest(tmp_path):
    files = [png(tmp_path / f"{i:02d}.png", seed=i) for i in range(10)]
    det = FakeDetector(hook=lambda b: os.kill(os.getpid(), signal.SIGTERM) if b == 2 else None)
    before = signal.getsignal(signal.SIGTERM)
    n, failed = predict_to_folder(det, files, tmp_path / "out", batch=3, write_images=False)
    assert signal.getsignal(signal.SIGTERM) == before  # handler restored
    rows_csv, rows_json = read_rows(tmp_path / "out")
    assert n == 10 and len(rows_json) == 10
    assert [r["status"] for r in rows_json[:6]] == ["ok"] * 6  # the batch in flight was finished
    assert all(r["error"] == NOT_SCORED and r["is_anomaly"] is None for r in rows_json[6:]) and failed == 4


def test_fifo_is_an_error_row_not_a_hang(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    png(folder / "a.png")
    os.mkfifo(folder / "b.png")
    result: list = []
    t = threading.Thread(target=lambda: result.append(
        predict_to_folder(FakeDetector(), [folder], tmp_path / "out", write_images=False)), daemon=True)
    t.start()
    t.join(30)
    assert result == [(2, 1)]
    rows_csv, _ = read_rows(tmp_path / "out")
    assert "not a regular file" in rows_csv[1]["error"]
    assert stat.S_ISFIFO(os.stat(folder / "b.png").st_mode)


def test_decoded_pixels_are_budgeted_per_batch_and_capped_per_image(tmp_path):
    files = [png(tmp_path / f"{i}.png", size=64, seed=i) for i in range(7)]  # 4096 px each
    det = FakeDetector()
    predict_to_folder(det, files, tmp_path / "o1", batch=32, batch_megapixels=0.01, write_images=False)
    assert sum(det.batches) == 7 and max(det.batches) == 3  # 3 x 4096 >= 10,000 closes a batch
    n, failed = predict_to_folder(FakeDetector(), files, tmp_path / "o2", max_megapixels=0.004, write_images=False)
    assert (n, failed) == (7, 7)
    assert "megapixel limit" in read_rows(tmp_path / "o2")[0][0]["error"]


def test_empty_argument_is_refused(fitted, tmp_path, capsys):
    from normalcy.apps.cli import main

    with pytest.raises(ParameterError, match="empty"):
        predict_to_folder(FakeDetector(), [""], tmp_path / "out")
    model = fitted.save(tmp_path / "m.normalcy")
    assert main(["predict", str(model), "", "-o", str(tmp_path / "o")]) == 2
    assert "empty" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_trailing_group_of_one_is_merged_for_batch_detectors(tmp_path):
    files = [png(tmp_path / f"{i:02d}.png", seed=i) for i in range(33)]
    det = FakeDetector(min_batch=2)
    n, failed = predict_to_folder(det, files, tmp_path / "out", batch=32, write_images=False)
    assert (n, failed) == (33, 0) and det.batches == [33]
    det1 = FakeDetector(min_batch=2)
    n, failed = predict_to_folder(det1, files[:1], tmp_path / "one", write_images=False)
    assert (n, failed) == (1, 1)  # one image alone cannot be scored by such a detector: an error row, no crash


def test_narrator_works_without_httpx(monkeypatch):
    import sys

    from normalcy.explain.narrator import Narrator

    monkeypatch.setitem(sys.modules, "httpx", None)  # import httpx would fail
    img = np.zeros((8, 8, 3), dtype=np.uint8)
    out = Narrator("http://127.0.0.1:9/v1", "m", timeout=1).narrate(img, img, {"summary": "", "regions": []})
    assert out["reply"] is None and out["error"]


def test_error_rows_have_no_decision(tmp_path):
    (tmp_path / "t.png").write_text("not an image")
    predict_to_folder(FakeDetector(), [tmp_path / "t.png"], tmp_path / "out", write_images=False)
    rows_csv, rows_json = read_rows(tmp_path / "out")
    assert rows_csv[0]["is_anomaly"] == "" and rows_csv[0]["severity"] == "error"
    assert rows_json[0]["is_anomaly"] is None and rows_json[0]["severity"] == "error"
    pred = Prediction(status="error", error="x")
    assert pred.severity == "error" and pred.to_dict()["is_anomaly"] is None


# ---- silent wrong answers -------------------------------------------------------------------------------------
def _encoded(fmt: str, size: int = 64) -> bytes:
    arr = (np.random.default_rng(1).random((size, size, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def _png_with_short_stream(data: bytes) -> bytes:
    """The same PNG with its IDAT payload cut in half but every chunk well formed (valid CRCs, IEND present)."""
    import struct
    import zlib

    pos, out = 8, [data[:8]]
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IDAT":
            body = body[: len(body) // 2]
        out.append(struct.pack(">I4s", len(body), kind) + body + struct.pack(">I", zlib.crc32(kind + body)))
        pos += 12 + length
    return b"".join(out)


def test_truncated_png_and_jpeg_are_errors_everywhere(tmp_path):
    from normalcy.apps.serve.uploads import decode_upload

    short_png = _png_with_short_stream(_encoded("PNG"))
    jpeg = _encoded("JPEG")
    cut_jpeg = jpeg[: len(jpeg) // 2] + b"\xff\xd9"
    for name, data, fmt in (("p.png", short_png, "PNG"), ("j.jpg", cut_jpeg, "JPEG")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CorruptImageError, match="truncated"):
            read_image(tmp_path / name)
        with pytest.raises(CorruptImageError, match="truncated"):
            decode_upload(data, fmt)
    (tmp_path / "ok.jpg").write_bytes(jpeg)
    assert read_image(tmp_path / "ok.jpg").shape == (64, 64, 3)


def _model_bytes(fitted, tmp_path) -> tuple[Path, bytes]:
    path = fitted.save(tmp_path / "m.normalcy")
    return path, path.read_bytes()


def test_every_metadata_byte_flip_is_a_model_file_error(fitted, tmp_path):
    import normalcy

    path, data = _model_bytes(fitted, tmp_path)
    header_len = int.from_bytes(data[:8], "little")
    rng = np.random.default_rng(0)
    bad = tmp_path / "bad.normalcy"
    loaded = 0
    for pos in rng.choice(np.arange(8, 8 + header_len), size=60, replace=False):
        flipped = bytearray(data)
        flipped[pos] ^= 1 << int(rng.integers(0, 8))
        bad.write_bytes(bytes(flipped))
        try:
            det = normalcy.load(bad)
        except ModelFileError:
            continue
        loaded += 1  # a flip inside the safetensors layout may leave a valid, identical model
        assert det.get_params() == fitted.get_params()
        np.testing.assert_array_equal(det.calibration_.scores, fitted.calibration_.scores)
    assert loaded <= 6


def test_wrongly_typed_metadata_is_a_model_file_error(fitted, tmp_path):
    from safetensors import safe_open
    from safetensors.numpy import save_file

    import normalcy
    from normalcy.store import META_HASH_KEY, META_KEY, _text_digest

    path, _ = _model_bytes(fitted, tmp_path)
    with safe_open(str(path), framework="np") as f:
        meta = json.loads(f.metadata()[META_KEY])
        arrays = {k: f.get_tensor(k) for k in f.keys()}
    for change in ({"params": []}, {"params": {"alpha": "high"}}, {"detector": 3}, {"state": {"bank_file": 1}},
                   {"backbone": "x"}, {"params": {"no_such": 1}}):
        text = json.dumps({**meta, **change})
        save_file(arrays, str(tmp_path / "v.normalcy"), metadata={META_KEY: text, META_HASH_KEY: _text_digest(text)})
        with pytest.raises(ModelFileError):
            normalcy.load(tmp_path / "v.normalcy")


def test_serve_with_damaged_model_prints_one_line_and_exits_2(fitted, tmp_path, capsys):
    pytest.importorskip("fastapi")
    from normalcy.apps.cli import main

    _, data = _model_bytes(fitted, tmp_path)
    bad = tmp_path / "bad.normalcy"
    damaged = data.replace(b'\\"alpha\\": 0.1', b'\\"alpha\\": 0.9')  # the default alpha, inside the JSON header
    assert damaged != data and len(damaged) == len(data)
    bad.write_bytes(damaged)
    import normalcy

    with pytest.raises(ModelFileError):  # checked first: a model that loads would start a server that never ends
        normalcy.load(bad)
    assert main(["serve", str(bad), "--port", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("normalcy: error:")


# ---- security -------------------------------------------------------------------------------------------------
def test_postscript_named_png_never_reaches_ghostscript(tmp_path, monkeypatch):
    marker = tmp_path / "gs-ran"
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    gs = fake_bin / "gs"
    gs.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    gs.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    eps = tmp_path / "x.png"
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n%%EOF\n")
    with pytest.raises(CorruptImageError, match="not a supported raster image"):
        read_image(eps)
    from normalcy.data import as_rgb_array

    with pytest.raises(CorruptImageError):
        as_rgb_array(Image.open(eps))
    assert not marker.exists()


def test_sidecar_bank_must_be_a_plain_name_beside_the_model(tmp_path):
    from normalcy.detectors.image.bank import check_sidecar_name

    model = tmp_path / "m.normalcy"
    assert check_sidecar_name("m.normalcy.bank.npy", model) == "m.normalcy.bank.npy"
    for bad in ("../../../etc/passwd", "/etc/passwd", "sub/x.npy", "..", "", "x.npy\x00", 5, "a\\..\\b.npy"):
        with pytest.raises(ModelFileError):
            check_sidecar_name(bad, model)


def test_csv_cells_cannot_start_a_formula():
    assert csv_safe("=cmd|' /C calc'!A0") == "'=cmd|' /C calc'!A0"
    assert csv_safe("@SUM(1)") == "'@SUM(1)" and csv_safe("-2+3") == "'-2+3"
    assert csv_safe("-0.5") == "-0.5" and csv_safe(-0.5) == -0.5 and csv_safe("plain.png") == "plain.png"


def test_upload_errors_name_no_python_objects():
    from normalcy.apps.serve.uploads import inspect_upload

    info = inspect_upload(io.BytesIO(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40), "x.png", 10**7)
    assert info.header_error and "0x" not in info.header_error and "object" not in info.header_error


def test_openapi_requires_at_least_one_file():
    pytest.importorskip("fastapi")
    from normalcy.apps.serve.app import create_app

    schema = create_app().openapi()
    ref = schema["paths"]["/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
    files = schema["components"]["schemas"][ref.rsplit("/", 1)[1]]["properties"]["files"]
    assert files["minItems"] == 1


def test_slow_headers_are_dropped_and_connections_capped_per_client():
    pytest.importorskip("uvicorn")
    import asyncio
    import socket
    import time

    import uvicorn

    from normalcy.apps.serve.server import guarded_protocol

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="error", lifespan="off", http=guarded_protocol(0.5, 3))
    server = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        slow = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
        for s in slow:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # headers never finished
            s.settimeout(5)
        assert b"503" in slow[3].recv(200)  # the 4th from one address is refused at once
        for s in slow[:3]:
            assert s.recv(100) == b""  # closed by the server after the header timeout
        ok = socket.create_connection(("127.0.0.1", port))
        ok.settimeout(5)
        ok.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"200" in ok.recv(200)
        for s in [*slow, ok]:
            s.close()
    finally:
        server.should_exit = True
        thread.join(5)
