"""The review page in a real headless Chromium against a real uvicorn process: upload, overlay, score, re-decide."""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.test_serve_helpers import defect_png, model_file, normal_png

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
if os.environ.get("NORMALCY_SKIP_BROWSER") == "1":
    pytest.skip("NORMALCY_SKIP_BROWSER=1", allow_module_level=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(model: Path, log: Path, *options: str) -> Iterator[str]:
    """`normalcy serve MODEL [OPTIONS]` in its own process on a free loopback port; yields the base URL once /health
    answers and stops the process afterwards."""
    port = _free_port()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "normalcy.apps.cli", "--threads", "2", "serve", str(model),
                                 "--host", "127.0.0.1", "--port", str(port), *options],
                                stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"server did not start (exit {proc.poll()}):\n{log.read_text()}")
            time.sleep(0.25)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`normalcy serve` in its own process on a free loopback port; yields the base URL."""
    model = model_file(tmp_path_factory.mktemp("serve-model"))
    with serving(model, tmp_path_factory.mktemp("serve-log") / "server.log") as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail("Chromium is missing: install it with `apt-get update && apt-get install -y chromium` "
                    "(or set NORMALCY_SKIP_BROWSER=1 to skip this test)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the playwright package is missing: pip install -e '.[test]' (never `playwright install`)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


def test_review_page_upload_overlay_score_and_redecide(server, browser, tmp_path):
    images = {"good.png": normal_png(11), "bad.png": defect_png(12)}
    for name, data in images.items():
        (tmp_path / name).write_bytes(data)
    ctx = browser.new_context(viewport={"width": 1366, "height": 900}, bypass_csp=True, accept_downloads=True)
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server + "/")
    page.wait_for_selector("#model-chip b")
    assert "patchcore" in page.inner_text("#model-chip")

    page.set_input_files("#pick-files", [str(tmp_path / n) for n in images])
    page.wait_for_function("document.querySelectorAll('.card .score').length === 2", timeout=60_000)
    page.wait_for_function("[...document.querySelectorAll('.card img.heat')].every(i => i.complete && i.naturalWidth)")
    cards = page.locator(".card")
    assert cards.nth(0).locator(".name").inner_text() == "bad.png"  # sorted by score, highest first
    bad_score = float(cards.nth(0).locator(".score").inner_text())
    good_score = float(cards.nth(1).locator(".score").inner_text())
    assert bad_score > good_score > 0
    heat = cards.nth(0).locator("img.heat")
    assert heat.get_attribute("src").startswith("data:image/png;base64,")
    assert heat.evaluate("i => i.naturalWidth") == 64

    page.click('.chip[data-alpha="0.1"]')  # re-decide client-side: 1/(n+1) = 1/11 <= 10% can flag
    assert cards.nth(0).locator(".badge").inner_text().lower() in ("anomalous", "severe")
    assert page.inner_text("#n-flagged") == "1"
    page.click('.chip[data-alpha="0.01"]')  # below 1/11: nothing can be flagged, and the page says so
    assert page.inner_text("#n-flagged") == "0"
    assert "Too strict" in page.inner_text("#alpha-hint")

    with page.expect_download() as dl:
        page.click("#export")
    rows = list(csv.DictReader(open(dl.value.path(), newline="")))
    assert [r["filename"] for r in rows] == ["good.png", "bad.png"]
    assert rows[1]["is_anomaly"] == "false" and float(rows[1]["score"]) == pytest.approx(bad_score, rel=1e-3)

    page.screenshot(path=str(tmp_path / "review.png"))
    assert (tmp_path / "review.png").stat().st_size > 10_000
    assert errors == []
    ctx.close()


def test_api_docs_render_offline(server, browser, tmp_path):
    """Swagger UI at /docs loads every script and style from the server itself: no request leaves the machine."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    outside: list[str] = []

    def only_local(route):
        if route.request.url.startswith(server):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    ctx.route("**/*", only_local)
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(server + "/docs")
    page.wait_for_selector(".swagger-ui .opblock", timeout=30_000)
    assert "/predict" in page.inner_text("body")
    page.screenshot(path=str(tmp_path / "docs.png"))
    assert (tmp_path / "docs.png").stat().st_size > 10_000
    assert outside == [] and errors == []
    ctx.close()
