"""Shared pieces for the serve tests: one tiny fitted model per test session, and PNG helpers (no tests here)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from tests.conftest import texture, with_defect

_MODEL: dict[str, Path] = {}


def model_file(root: Path) -> Path:
    """A PatchCore at image_size 64 fitted once per session (holdout calibration: 10 normal scores, alpha 0.2)."""
    if "path" not in _MODEL:
        import normalcy

        rng = np.random.default_rng(0)
        det = normalcy.PatchCore(image_size=64, alpha=0.2, calibration_fraction=0.5, progress=False)
        det.fit([texture(rng) for _ in range(20)])
        assert det.calibration_.method == "holdout" and det.calibration_.n == 10
        _MODEL["path"] = det.save(root / "serve-test.normalcy")
    return _MODEL["path"]


def png_bytes(arr: np.ndarray | Image.Image, fmt: str = "PNG") -> bytes:
    """Encode an array or PIL image in memory."""
    img = arr if isinstance(arr, Image.Image) else Image.fromarray(arr)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def normal_png(seed: int = 100) -> bytes:
    """A normal texture like the training images."""
    return png_bytes(texture(np.random.default_rng(seed)))


def defect_png(seed: int = 200) -> bytes:
    """The same texture with an obvious bright square."""
    return png_bytes(with_defect(texture(np.random.default_rng(seed)))[0])
