"""The README's two set-up commands are what CI runs, and they provision everything the suite needs."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_setup_commands() -> list[str]:
    """The non-empty lines of the first bash block under the README's "Set up" heading."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Set up"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None, "the README's set-up section has no ```bash block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_ci_runs_exactly_the_readme_commands_then_ruff():
    steps = subprocess.run(["bash", str(ROOT / ".ci" / "run"), "--dry-run"], capture_output=True, text=True,
                           check=True).stdout.splitlines()
    assert steps == [*readme_setup_commands(), "ruff check ."]


def test_readme_setup_installs_chromium_and_runs_the_main_job_then_the_tests():
    install, tests = readme_setup_commands()
    assert "apt-get install -y chromium" in install and "/usr/bin/chromium" in install  # for the browser tests
    assert 'pip install -e ".[test]"' in install and install.endswith("normalcy demo")
    assert tests == "python -m pytest"
    browser_test = (ROOT / "tests" / "test_serve_browser.py").read_text()
    assert "/usr/bin/chromium" in browser_test  # the path the README's first command provides


def test_ci_never_skips_the_browser_tests():
    script = (ROOT / ".ci" / "run").read_text()
    assert "unset NORMALCY_SKIP_BROWSER" in script
