"""Groups given as sub-folders or a CSV (path,group), from Python and the CLI; rows carry each image's group."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from conftest import texture

import normalcy
from normalcy.apps.cli import EXIT_OK, main
from normalcy.calibration.groups import csv_labels, subfolder_labels
from normalcy.errors import ParameterError

SMALL = ["--detector", "padim", "--image-size", "64", "--param", "progress=false", "--param", "n_features=20",
         "--param", "calibration_fraction=0.5", "--alpha", "0.2"]


@pytest.fixture(scope="module")
def two_products(tmp_path_factory):
    """A folder with sub-folders dark/ and bright/ of 16 normal images each (two product variants)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("groups") / "parts"
    rng = np.random.default_rng(0)
    for name, shift in (("dark", -90), ("bright", 90)):
        (root / name).mkdir(parents=True)
        for i in range(16):
            img = np.clip(texture(rng).astype(int) + shift, 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / name / f"{name}{i:02d}.png")
    return root


def test_subfolder_and_csv_labels(two_products, tmp_path):
    files = sorted(two_products.rglob("*.png"))
    assert list(subfolder_labels(files)) == [f.parent.name for f in files]
    table = tmp_path / "groups.csv"
    with open(table, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "group"])
        for f in files:
            w.writerow([f, "A" if f.parent.name == "dark" else "B"])
    assert list(csv_labels(table, files)) == ["A" if f.parent.name == "dark" else "B" for f in files]
    with pytest.raises(ParameterError, match="no group for 1"):
        csv_labels(table, [*files, tmp_path / "other.png"])
    with pytest.raises(ParameterError, match="needs image files"):
        subfolder_labels([np.zeros((4, 4, 3), np.uint8)])


def test_python_fit_with_subfolders_assigns_groups_on_predict(two_products):
    files = sorted(two_products.rglob("*.png"))
    det = normalcy.PaDiM(image_size=64, alpha=0.2, n_features=20, calibration_fraction=0.5, progress=False)
    det.fit(files, groups="subfolders")
    assert sorted(det.calibration_.groups) == ["bright", "dark"]
    by_path = [p.group for p in det.predict([files[0], files[-1]])]
    assert by_path == [files[0].parent.name, files[-1].parent.name]
    arrays = [normalcy.data.as_rgb_array(f) for f in (files[0], files[-1])]  # no path: the nearest group centre
    assert [p.group for p in det.predict(arrays)] == by_path


@pytest.mark.parametrize("how", ["subfolders", "csv"])
def test_cli_fit_groups_and_predict_rows_carry_the_group(two_products, tmp_path, how):
    import shutil

    data, spec = two_products, how
    if how == "csv":  # one flat folder of both variants, their groups in a CSV with paths relative to it
        data = tmp_path / "flat"
        data.mkdir()
        spec = str(tmp_path / "flat" / "groups.csv")
        with open(spec, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["path", "group"])
            for f in sorted(two_products.rglob("*.png")):
                shutil.copy(f, data / f.name)
                w.writerow([f.name, f"v-{f.parent.name}"])
    model = tmp_path / "m.normalcy"
    assert main(["fit", str(data), "-o", str(model), "--groups", spec, *SMALL]) == EXIT_OK
    out = tmp_path / "out"
    assert main(["predict", str(model), str(two_products / "dark"), str(two_products / "bright"), "-o", str(out),
                 "--no-images"]) == EXIT_OK
    with open(out / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    prefix = "v-" if how == "csv" else ""
    assert len(rows) == 32
    assert {r["group"] for r in rows if "/dark/" in r["path"]} == {prefix + "dark"}
    assert {r["group"] for r in rows if "/bright/" in r["path"]} == {prefix + "bright"}
