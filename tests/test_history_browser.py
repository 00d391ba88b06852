"""History and drift views in a real headless Chromium against `normalcy serve --db` in its own process.

Screenshots go to the test's temporary folder; with NORMALCY_UPDATE_SCREENSHOTS=1 they are written to
docs/img/history.png and docs/img/drift.png (the pictures in docs/serve.md).
"""

from __future__ import annotations

import csv
import io
import os
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from playwright.sync_api import expect

from tests.conftest import REPO, texture
from tests.test_serve_browser import browser, serving  # noqa: F401  (browser: fixture)
from tests.test_serve_helpers import defect_png, model_file, png_bytes

if os.environ.get("NORMALCY_SKIP_BROWSER") == "1":
    pytest.skip("NORMALCY_SKIP_BROWSER=1", allow_module_level=True)


@pytest.fixture(scope="module")
def db_server(tmp_path_factory):
    """`normalcy serve --db` on a free loopback port; yields (base URL, database path)."""
    model = model_file(tmp_path_factory.mktemp("history-browser-model"))
    root = tmp_path_factory.mktemp("history-browser")
    db = root / "inspections.sqlite"
    with serving(model, root / "server.log", "--db", str(db)) as url:
        yield url, db


def feed(url: str) -> None:
    """60 normal textures, then 40 darker ones (brightness x0.75), then one defect, through POST /predict."""
    rng = np.random.default_rng(42)
    images = [(f"normal_{i:02d}.png", png_bytes(texture(rng))) for i in range(60)]
    images += [(f"dim_{i:02d}.png", png_bytes((texture(rng) * 0.75).astype(np.uint8))) for i in range(40)]
    images += [("defect.png", defect_png(9))]
    with httpx.Client(base_url=url, timeout=60) as client:
        for i in range(0, len(images), 8):
            files = [("files", (name, data, "image/png")) for name, data in images[i:i + 8]]
            assert client.post("/predict", files=files).status_code == 200
        deadline = time.monotonic() + 30
        while client.get("/health").json()["history"]["written"] < len(images):
            assert time.monotonic() < deadline, client.get("/health").json()
            time.sleep(0.1)


def shot(page, name: str, tmp_path: Path) -> Path:
    out = REPO / "docs" / "img" if os.environ.get("NORMALCY_UPDATE_SCREENSHOTS") == "1" else tmp_path
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    page.screenshot(path=str(path))
    assert path.stat().st_size > 10_000
    return path


def test_history_and_drift_views(db_server, browser, tmp_path):  # noqa: F811
    url, _ = db_server
    feed(url)
    ctx = browser.new_context(viewport={"width": 1366, "height": 900}, accept_downloads=True)
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)

    page.goto(url + "/#history")
    page.wait_for_selector("#h-rows tr")
    assert page.inner_text("#h-range") == "1–50 of 101"
    assert page.locator("#h-rows tr").count() == 50
    first = page.locator("#h-rows tr").first
    assert "defect.png" in first.inner_text() and "flagged" in first.inner_text().lower()
    thumb = page.locator(".h-thumb img").first
    expect(thumb).to_have_js_property("complete", True)
    assert thumb.evaluate("i => i.naturalWidth") == 64  # the stored thumbnail, served by /history/{id}/thumb
    page.click("#h-older")
    expect(page.locator("#h-range")).to_have_text("51–100 of 101")
    page.click("#h-newer")
    expect(page.locator("#h-range")).to_have_text("1–50 of 101")

    first = page.locator("#h-rows tr").first
    first.locator("button", has_text="Confirm").click()  # no name yet: refused with a hint
    assert "Enter your name" in page.inner_text("#h-status")
    page.fill("#h-who", "Ana QA")
    first.locator("button", has_text="Confirm").click()
    expect(page.locator("#h-rows tr .h-label").first).to_contain_text("confirm · Ana QA")
    page.locator("#h-rows tr").nth(1).locator("button", has_text="Overrule").click()
    expect(page.locator("#h-rows tr .h-label .badge")).to_have_count(2)

    page.select_option("#h-decision", "flagged")
    expect(page.locator("#h-range")).not_to_have_text("1–50 of 101")
    decisions = page.locator("#h-rows tr td:nth-child(6)").all_inner_texts()
    assert decisions and all("flagged" in d.lower() for d in decisions)
    page.select_option("#h-decision", "")
    expect(page.locator("#h-range")).to_have_text("1–50 of 101")
    with page.expect_download() as dl:
        page.click("#h-export")
    rows = list(csv.DictReader(io.StringIO(Path(dl.value.path()).read_text())))
    assert len(rows) == 101 and rows[-1]["filename"] == "defect.png" and rows[-1]["label_by"] == "Ana QA"
    shot(page, "history.png", tmp_path)

    page.click('.view-tab[data-view="drift"]')
    page.wait_for_selector(".drift-card svg polyline")
    assert page.locator(".drift-card").count() == 3
    assert page.locator(".drift-svg .threshold").count() == 3
    status = page.inner_text("#d-status")
    assert "images decided normal" in status or "Drift alarm" in status
    shot(page, "drift.png", tmp_path)
    assert errors == []
    ctx.close()
