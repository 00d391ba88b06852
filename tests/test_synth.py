"""Synthetic anomalies: masks cover exactly what changed, seeds reproduce, transplants copy the real defect."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from normalcy.apps.cli import main
from normalcy.data import load_mvtec, read_mask
from normalcy.errors import EmptyFolderError, MaskMismatchError, MissingMaskError, ParameterError
from normalcy.synth.anomalies import cut_paste, perlin_blend, poisson_blend, quantize, transplant
from normalcy.synth.folders import find_defects, synthesize
from normalcy.synth.noise import perlin_mask, perlin_noise
from tests.conftest import texture, with_defect, write_mvtec


def _float(img: np.ndarray) -> np.ndarray:
    return img[..., :1].astype(np.float32) / 255.0


@pytest.fixture()
def normal_dir(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "normal"
    folder.mkdir()
    for i in range(6):
        Image.fromarray(texture(rng)[..., 0]).save(folder / f"{i}.png")
    return folder


@pytest.fixture()
def defect_dir(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "defects"
    folder.mkdir()
    for i in range(2):
        img, mask = with_defect(texture(rng))
        Image.fromarray(img).save(folder / f"d{i}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(folder / f"d{i}_mask.png")
    return folder


def test_perlin_noise_is_seeded_and_bounded():
    a = perlin_noise((40, 50), (4, 5), np.random.default_rng(3))
    b = perlin_noise((40, 50), (4, 5), np.random.default_rng(3))
    assert a.shape == (40, 50) and np.array_equal(a, b)
    assert np.abs(a).max() <= 1.5 and a.std() > 0.05
    mask = perlin_mask((64, 64), 0.1, np.random.default_rng(0))
    assert abs(mask.mean() - 0.1) < 0.02


@pytest.mark.parametrize("kind", ["perlin", "cutpaste", "transplant"])
def test_mask_is_exactly_the_changed_pixels(kind):
    rng = np.random.default_rng(0)
    base, other = _float(texture(rng)), _float(texture(rng))
    for seed in range(5):
        g = np.random.default_rng(seed)
        if kind == "transplant":
            dimg, dmask = with_defect(texture(rng))
            img, mask = transplant(base, _float(dimg), dmask, g)
        else:
            img, mask = (perlin_blend if kind == "perlin" else cut_paste)(base, other, g, severity=0.8)
        assert img.shape == base.shape and mask.shape == base.shape[:2] and mask.dtype == bool
        changed = (quantize(img) != quantize(base)).any(axis=2)
        assert mask.any() and np.array_equal(mask, changed)


def test_transplant_pixels_come_from_the_source_defect():
    rng = np.random.default_rng(2)
    base = _float(texture(rng))
    dimg, dmask = with_defect(texture(rng))
    src = dimg.astype(np.float32) / 255.0
    img, mask = transplant(base, src, dmask, np.random.default_rng(0), scale=1.0, jitter=0.0,
                           match_brightness=False)
    core = ndimage.binary_erosion(dmask, iterations=2)  # same size, same place: the core is a 1:1 copy
    np.testing.assert_allclose(img[core][:, 0], src[core].mean(axis=1), atol=1.5 / 255)
    assert mask[dmask].all()
    assert (quantize(img)[~mask] == quantize(base)[~mask]).all()


def test_poisson_blend_keeps_gradients_and_drops_offsets():
    base = np.full((30, 30, 1), 0.5, np.float32)
    region = np.zeros((30, 30), bool)
    region[8:22, 8:22] = True
    src = base + 0.3  # a flat plateau: no gradient inside, so the clone must melt into the base
    out = poisson_blend(base, src, region, iters=2000)
    assert np.abs(out - 0.5).max() < 0.01
    y, x = np.mgrid[0:30, 0:30]
    bump = (0.2 * np.exp(-((y - 15) ** 2 + (x - 15) ** 2) / 8.0)).astype(np.float32)[..., None]
    out = poisson_blend(base, src + bump, region, iters=3000)  # the bump's shape survives, the offset does not
    np.testing.assert_allclose(out, base + bump, atol=0.01)


def test_synthesize_writes_mvtec_layout_reproducibly(tmp_path, normal_dir, defect_dir):
    a = synthesize(normal_dir, tmp_path / "a", n=6, defect_dir=defect_dir, seed=4, severity_levels=2)
    synthesize(normal_dir, tmp_path / "b", n=6, defect_dir=defect_dir, seed=4, severity_levels=2)
    synthesize(normal_dir, tmp_path / "c", n=6, defect_dir=defect_dir, seed=5, severity_levels=2)
    assert a == {"perlin": 2, "cutpaste": 2, "transplant": 2}
    train, test = load_mvtec(tmp_path / "a")
    assert len(train) == 3 and sum(s.label for s in test) == 6
    for s in test:
        if s.label == 1:
            img = np.array(Image.open(s.path))
            mask = read_mask(s.mask_path, img.shape[:2])
            assert mask.any()
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a" / "test").rglob("*.png"))
    same = [(tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files]
    differ = [(tmp_path / "a" / f).read_bytes() != (tmp_path / "c" / f).read_bytes() for f in files
              if "good" not in str(f)]
    assert all(same) and any(differ)
    with open(tmp_path / "a" / "severity.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["severity"]) for r in rows] == [1, 1, 1, 2, 2, 2]


def test_synth_errors(tmp_path, normal_dir, defect_dir):
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmptyFolderError):
        synthesize(tmp_path / "empty", tmp_path / "o1", n=2)
    with pytest.raises(ParameterError, match="from-defects"):
        synthesize(normal_dir, tmp_path / "o2", n=2, kinds=("transplant",))
    (defect_dir / "d1_mask.png").unlink()
    with pytest.raises(MissingMaskError, match="d1"):
        synthesize(normal_dir, tmp_path / "o3", n=2, defect_dir=defect_dir)
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(defect_dir / "d1_mask.png")
    with pytest.raises(MaskMismatchError):
        synthesize(normal_dir, tmp_path / "o4", n=6, defect_dir=defect_dir, kinds=("transplant",))


def test_cli_synth(tmp_path, normal_dir, capsys):
    assert main(["synth", str(normal_dir), "-o", str(tmp_path / "out"), "--n", "4", "--kinds", "perlin"]) == 0
    assert len(list((tmp_path / "out" / "ground_truth" / "perlin").glob("*_mask.png"))) == 4
    assert main(["synth", str(tmp_path / "nope"), "-o", str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_find_defects_reads_an_mvtec_category(tmp_path):
    root = write_mvtec(tmp_path / "cat", n_train=1, n_good=1, n_bad=3)
    found = find_defects(root)
    assert [d.defect_type for d in found] == ["blob"] * 3  # test/good is not a defect source
    assert all(d.mask.name == f"{d.image.stem}_mask.png" for d in found)
    (root / "ground_truth" / "blob" / "001_mask.png").unlink()
    with pytest.raises(MissingMaskError, match="001_mask.png"):
        find_defects(root)
