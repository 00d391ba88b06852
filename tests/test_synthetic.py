"""The built-in demo set: layout, counts, masks, determinism, and that load_mvtec reads it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from normalcy.data import find_categories, load_mvtec, read_image, read_mask
from normalcy.data.synthetic import DEFECT_TYPES, make_demo_dataset
from normalcy.errors import LayoutError, ParameterError

TINY = dict(n_train=3, n_test_good=2, n_test_defect_per_type=2, size=64)


def files(root: Path) -> dict[str, bytes]:
    """Every file under root (hidden marker included) by relative path, with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("demo"), **TINY)


def test_layout_and_counts(demo):
    assert DEFECT_TYPES == ("scratch", "spot", "crack")
    assert [p.name for p in find_categories(demo)] == ["fabric", "tiles"]
    for category in ("tiles", "fabric"):
        folder = demo / category
        assert len(list((folder / "train" / "good").glob("*.png"))) == 3
        assert len(list((folder / "test" / "good").glob("*.png"))) == 2
        for kind in DEFECT_TYPES:
            images = sorted((folder / "test" / kind).glob("*.png"))
            masks = sorted((folder / "ground_truth" / kind).glob("*.png"))
            assert [p.stem + "_mask" for p in images] == [m.stem for m in masks]


def test_images_and_masks(demo):
    for category in ("tiles", "fabric"):
        for kind in DEFECT_TYPES:
            for image_path in sorted((demo / category / "test" / kind).glob("*.png")):
                image = read_image(image_path)
                assert image.shape == (64, 64, 3)
                raw = np.array(
                    Image.open(demo / category / "ground_truth" / kind / f"{image_path.stem}_mask.png")
                )
                assert raw.shape == (64, 64) and set(np.unique(raw)) <= {0, 255}
                assert 0 < (raw > 0).sum() < 64 * 64 // 4


def test_normals_vary(demo):
    a, b = (read_image(demo / "tiles" / "train" / "good" / f"00{i}.png").astype(int) for i in (0, 1))
    assert np.abs(a - b).mean() > 2
    assert 40 < a.mean() < 220 and a.std() > 3  # a plausible mid-grey textured surface, not flat or saturated


def test_load_mvtec_reads_it(demo):
    train, test = load_mvtec(demo / "fabric")
    assert len(train) == 3 and len(test) == 2 + 2 * len(DEFECT_TYPES)
    assert {s.defect_type for s in test} == {"good", *DEFECT_TYPES}
    for sample in test:
        assert (sample.mask_path is None) == (sample.label == 0)
        if sample.mask_path is not None:
            assert read_mask(sample.mask_path, shape=(64, 64)).any()


def test_deterministic_and_seeded(tmp_path, demo):
    again = make_demo_dataset(tmp_path / "again", **TINY)
    assert files(again) == files(demo)
    other = make_demo_dataset(tmp_path / "other", categories=("tiles",), seed=1, **TINY)
    first = "tiles/train/good/000.png"
    assert files(other)[first] != files(demo)[first]


def test_regenerate_in_place_and_refuse_foreign_folder(tmp_path):
    root = make_demo_dataset(tmp_path, categories=("tiles",), **TINY)
    make_demo_dataset(root, categories=("tiles",), **{**TINY, "n_train": 1})
    assert len(list((root / "tiles" / "train" / "good").iterdir())) == 1  # stale images removed
    (tmp_path / "fabric").mkdir()
    (tmp_path / "fabric" / "mine.txt").write_text("user data")
    with pytest.raises(LayoutError, match="refusing"):
        make_demo_dataset(tmp_path, **TINY)
    assert (tmp_path / "fabric" / "mine.txt").exists()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"categories": ("wood",)},
        {"categories": ()},
        {"n_train": 0},
        {"size": 8},
        {"seed": -1},
        {"size": 64.0},
    ],
)
def test_bad_parameters(tmp_path, kwargs):
    with pytest.raises(ParameterError):
        make_demo_dataset(tmp_path, **{**TINY, **kwargs})
    assert not any(tmp_path.iterdir())
