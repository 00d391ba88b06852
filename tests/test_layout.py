"""The package layout stays as designed: the library never imports the entry points, old paths still work."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "normalcy"


def imported_modules(path: Path) -> set[str]:
    """Every absolute module name a file imports (at any depth, including imports inside functions)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_library_never_imports_entry_points():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == "apps" or rel.name == "__init__.py" and len(rel.parts) == 1:
            continue
        bad = sorted(m for m in imported_modules(path) if m == "normalcy.apps" or m.startswith("normalcy.apps."))
        offenders += [f"{rel}: {m}" for m in bad]
    assert not offenders, "library modules import entry points:\n" + "\n".join(offenders)


def test_lower_rooms_do_not_import_higher_ones():
    """errors/data/features/synth/calibration sit below detectors; detectors sit below explain."""
    below = {"data": ("detectors", "explain", "synth", "store", "metrics"),
             "features": ("detectors", "explain", "synth", "store"),
             "synth": ("detectors", "explain", "store", "calibration"),
             "calibration": ("detectors", "explain", "store", "features"),
             "detectors": ("explain",)}
    offenders = []
    for room, forbidden in below.items():
        for path in (PACKAGE / room).rglob("*.py"):
            for m in imported_modules(path):
                if any(m == f"normalcy.{f}" or m.startswith(f"normalcy.{f}.") for f in forbidden):
                    offenders.append(f"{path.relative_to(PACKAGE)} imports {m}")
    assert not offenders, "\n".join(offenders)


def test_top_level_is_small_and_every_package_says_what_lives_there():
    entries = [p.name for p in PACKAGE.iterdir() if not p.name.startswith((".", "__pycache__"))]
    assert len(entries) <= 11, sorted(entries)
    for init in PACKAGE.rglob("__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc) > 20, f"{init.relative_to(PACKAGE)} needs a docstring saying what lives there"


@pytest.mark.parametrize("old, new, attr", [
    ("normalcy.calibrate", "normalcy.calibration.conformal", "Calibration"),
    ("normalcy.detectors.patchcore", "normalcy.detectors.image.patchcore", "PatchCore"),
    ("normalcy.vector.knn", "normalcy.detectors.vector.knn", "KNN"),
    ("normalcy.vector.tables", "normalcy.data.tables", None),
    ("normalcy.predict_io", "normalcy.apps.results", None),
    ("normalcy.cli", "normalcy.apps.cli", "main"),
    ("normalcy.synth_io", "normalcy.synth.folders", "synthesize"),
    ("normalcy.visualize", "normalcy.explain.overlay", None),
])
def test_old_import_paths_warn_and_give_the_same_objects(old, new, attr):
    for name in [n for n in sys.modules if n == old or n.startswith(old + ".")]:
        del sys.modules[name]
    with pytest.warns(DeprecationWarning, match="moved to"):
        mod = importlib.import_module(old)
    assert mod is importlib.import_module(new)
    assert mod.__spec__.name == new  # the module keeps its own identity
    if attr:
        assert getattr(mod, attr) is getattr(importlib.import_module(new), attr)


def test_old_names_of_modules_that_became_packages_still_resolve():
    from normalcy.detectors.image import common

    with pytest.warns(DeprecationWarning):
        from normalcy.detectors.image import border_cells
    assert border_cells is common.border_cells
    from normalcy.explain import attach  # the old module normalcy.explain is now explain/summary.py
    from normalcy.synth import perlin_blend  # the old module normalcy.synth is now synth/anomalies.py

    assert callable(attach) and callable(perlin_blend)


def test_public_api_is_unchanged_and_import_is_light():
    code = ("import sys, normalcy as nc; assert 'torch' not in sys.modules; "
            "assert nc.PatchCore.__name__ == 'PatchCore' and callable(nc.load) and callable(nc.data.load_mvtec); "
            "from normalcy.detectors import PatchCore, KNN; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"


def test_cli_help_imports_no_heavy_library():
    code = ("import sys; from normalcy.apps.cli import build_parser; build_parser(); "
            "heavy = [m for m in ('torch', 'sklearn', 'scipy', 'numpy', 'PIL') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for sub in ("--help", "fit --help", "predict --help", "bench --help", "serve --help"):
            res = subprocess.run([sys.executable, "-m", "normalcy.apps.cli", *sub.split()], capture_output=True,
                                 text=True)
            assert res.returncode == 0 and "usage: normalcy" in res.stdout, (sub, res.stderr)
