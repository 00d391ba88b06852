"""Shared tiny synthetic fixtures: noisy textures, and the same with an obvious drawn defect."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: see normalcy/__init__.py

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from tests.test_history_helpers import postgres  # noqa: E402, F401  (session fixture: a private PostgreSQL server)

torch.set_num_threads(2)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def texture(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """A grey stripe texture with noise: looks alike across seeds, never identical."""
    y, x = np.mgrid[0:size, 0:size]
    phase = rng.uniform(0, 2 * np.pi)
    base = 128 + 40 * np.sin(x / 3.0 + phase) + rng.normal(0, 6, (size, size))
    return np.repeat(base.clip(0, 255).astype(np.uint8)[..., None], 3, axis=2)


def with_defect(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Paint a bright square blob in the middle; return the image and its mask."""
    out = img.copy()
    mask = np.zeros(img.shape[:2], dtype=bool)
    s = img.shape[0]
    mask[s // 2 - 6 : s // 2 + 6, s // 2 - 6 : s // 2 + 6] = True
    out[mask] = (255, 40, 40)
    return out, mask


@pytest.fixture(scope="session")
def normal_images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [texture(rng) for _ in range(12)]


@pytest.fixture(scope="session")
def test_images() -> tuple[list[np.ndarray], np.ndarray]:
    """6 normal + 6 defective images and their labels."""
    rng = np.random.default_rng(1)
    goods = [texture(rng) for _ in range(6)]
    bads = [with_defect(texture(rng))[0] for _ in range(6)]
    return goods + bads, np.array([0] * 6 + [1] * 6)


def write_mvtec(root: Path, n_train: int = 10, n_good: int = 4, n_bad: int = 4, seed: int = 0) -> Path:
    """A tiny MVTec-layout category folder on disk."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for sub in ("train/good", "test/good", "test/blob", "ground_truth/blob"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n_train):
        Image.fromarray(texture(rng)).save(root / "train/good" / f"{i:03d}.png")
    for i in range(n_good):
        Image.fromarray(texture(rng)).save(root / "test/good" / f"{i:03d}.png")
    for i in range(n_bad):
        img, mask = with_defect(texture(rng))
        Image.fromarray(img).save(root / "test/blob" / f"{i:03d}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "ground_truth/blob" / f"{i:03d}_mask.png")
    return root
