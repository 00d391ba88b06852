"""`normalcy bench --report`: a self-contained HTML page with the charts and worst cases, checked in Chromium."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from normalcy.apps.cli import EXIT_OK, main
from tests.conftest import write_mvtec

CHROMIUM = Path("/usr/bin/chromium")
SMALL = ["--image-size", "64", "--param", "progress=false", "--param", "alpha=0.2", "--timing-images", "2"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    category = write_mvtec(root / "blobs")
    path = root / "out" / "report.html"
    assert main(["bench", str(category), "--detector", "patchcore", "--report", str(path), *SMALL]) == EXIT_OK
    return path


def test_report_is_self_contained_with_every_part(report):
    html = report.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)  # nothing fetched from elsewhere
    assert "<script" not in html
    for title in ("ROC (image level)", "Precision-recall (image level)", "Scores: normal vs anomalous",
                  "Calibration: realized vs target false-alarm rate", "Per defect type", "Worst false positives",
                  "Worst false negatives"):
        assert title in html, title
    assert html.count("<svg") == 4 and "threshold (alpha=0.2)" in html
    assert html.count('src="data:image/png;base64,') >= 2  # overlays of the worst cases, inline
    assert "<td>blob</td>" in html and "good (normal)" in html


def test_report_renders_in_chromium_without_errors(report, tmp_path):
    if os.environ.get("NORMALCY_SKIP_BROWSER") == "1":
        pytest.skip("NORMALCY_SKIP_BROWSER=1")
    if not CHROMIUM.exists():
        pytest.fail("Chromium is missing: install it with `apt-get update && apt-get install -y chromium`")
    from playwright.sync_api import sync_playwright

    from tests.test_serve_browser import CHROMIUM_ARGS

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            ctx = browser.new_context(viewport={"width": 1280, "height": 900})
            outside: list[str] = []
            ctx.route("**/*", lambda r: r.continue_() if r.request.url.startswith("file:")
                      else (outside.append(r.request.url), r.abort()))
            page = ctx.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(report.as_uri())
            assert page.locator("svg").count() == 4
            sizes = page.eval_on_selector_all("figure img", "els => els.map(e => e.complete && e.naturalWidth)")
            assert sizes and all(w and w > 0 for w in sizes)  # every inline overlay decodes
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
            assert (tmp_path / "report.png").stat().st_size > 20_000
            assert outside == [] and errors == []
        finally:
            browser.close()
