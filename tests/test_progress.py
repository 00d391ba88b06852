"""One progress display: plain lines in logs (no carriage returns), a bar on a terminal, one at a time."""

from __future__ import annotations

import ast
import io
from pathlib import Path

from normalcy.data.progress import ProgressBar, progress_iter

PACKAGE = Path(__file__).resolve().parents[1] / "normalcy"


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_gets_plain_periodic_lines_without_carriage_returns():
    log = io.StringIO()
    with ProgressBar(total=4, desc="predict", unit="img", file=log, interval=0) as bar:
        for _ in range(4):
            bar.update(1)
        bar.set_postfix(loss="0.5")
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert lines[0].startswith("predict: 1/4 img") and "left" in lines[0]
    assert lines[-1].startswith("predict: 4/4 img") and "done in" in lines[-1] and "loss=0.5" in lines[-1]


def test_log_stays_quiet_for_short_steps():
    log = io.StringIO()
    with ProgressBar(total=3, desc="fit", file=log, interval=60) as bar:
        bar.update(3)
    assert log.getvalue() == ""


def test_only_the_outermost_bar_is_shown():
    log = io.StringIO()
    with ProgressBar(total=2, desc="outer", file=log, interval=0) as outer:
        for _ in progress_iter(range(3), desc="inner", file=log):
            pass
        outer.update(2)
    assert "inner" not in log.getvalue() and "outer: 2/2" in log.getvalue()
    after = io.StringIO()
    with ProgressBar(total=1, desc="next", file=after, interval=0) as bar:  # closed bars free the display
        bar.update(1)
    assert "next: 1/1" in after.getvalue()


def test_terminal_gets_a_tqdm_bar_and_disable_shows_nothing():
    term = FakeTerminal()
    with ProgressBar(total=2, desc="score", file=term) as bar:
        bar.update(2)
    assert "score" in term.getvalue() and "\r" in term.getvalue()
    quiet = FakeTerminal()
    with ProgressBar(total=2, desc="score", file=quiet, disable=True) as bar:
        bar.update(2)
    assert quiet.getvalue() == ""


def test_no_module_but_the_helper_uses_tqdm_directly():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path == PACKAGE / "data" / "progress.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "tqdm":
                offenders.append(str(path.relative_to(PACKAGE)))
            elif isinstance(node, ast.Import) and any(a.name.split(".")[0] == "tqdm" for a in node.names):
                offenders.append(str(path.relative_to(PACKAGE)))
    assert offenders == [], f"use normalcy.data.progress instead of tqdm in {offenders}"
