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


def test_cli_predict_groups_given_per_image(two_products, tmp_path):
    """predict --groups: each new image's group stated (CSV or sub-folders) instead of the nearest group centre."""
    model = tmp_path / "m.normalcy"
    assert main(["fit", str(two_products), "-o", str(model), "--groups", "subfolders", *SMALL]) == EXIT_OK
    dark = sorted((two_products / "dark").glob("*.png"))[:4]
    table = tmp_path / "new.csv"  # deliberately the other group: the nearest centre would say "dark"
    with open(table, "w", newline="") as fh:
        csv.writer(fh).writerows([["path", "group"], *[[f, "bright"] for f in dark]])
    out = tmp_path / "out_csv"
    assert main(["predict", str(model), *map(str, dark), "-o", str(out), "--no-images", "--groups",
                 str(table)]) == EXIT_OK
    with open(out / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["group"] for r in rows] == ["bright"] * 4
    det = normalcy.load(model)  # the same p-values as the Python call with the groups given
    expected = [p.p_value for p in det.predict(dark, groups=["bright"] * 4)]
    assert np.allclose([float(r["p_value"]) for r in rows], expected)
    assert not np.allclose(expected, [p.p_value for p in det.predict(dark)])  # the stated group changed them

    out = tmp_path / "out_sub"  # sub-folders of the new images name their groups
    assert main(["predict", str(model), str(two_products), "-o", str(out), "--no-images", "--groups",
                 "subfolders"]) == EXIT_OK
    with open(out / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 32 and all(r["group"] in r["path"] for r in rows)


def test_cli_predict_groups_errors(two_products, tmp_path, capsys):
    model = tmp_path / "m.normalcy"
    assert main(["fit", str(two_products), "-o", str(model), "--groups", "subfolders", *SMALL]) == EXIT_OK
    table = tmp_path / "bad.csv"
    dark = sorted((two_products / "dark").glob("*.png"))[:2]
    with open(table, "w", newline="") as fh:
        csv.writer(fh).writerows([["path", "group"], [dark[0], "green"]])
    assert main(["predict", str(model), *map(str, dark), "-o", str(tmp_path / "o1"), "--groups", str(table)]) != EXIT_OK
    assert "no group for 1 new image" in capsys.readouterr().err
    assert main(["predict", str(model), str(dark[0]), "-o", str(tmp_path / "o2"), "--groups", str(table)]) != EXIT_OK
    assert "not seen when fitting" in capsys.readouterr().err
    pooled = tmp_path / "pooled.normalcy"
    assert main(["fit", str(two_products / "dark"), "-o", str(pooled), *SMALL]) == EXIT_OK
    assert main(["predict", str(pooled), str(dark[0]), "-o", str(tmp_path / "o3"), "--groups", "subfolders"]) != EXIT_OK
    assert "needs a model fitted with groups" in capsys.readouterr().err


def test_cli_predict_groups_refused_for_table_models(tmp_path, capsys):
    from normalcy.detectors import create_detector

    rng = np.random.default_rng(0)
    model = create_detector("knn").fit(rng.normal(size=(40, 3))).save(tmp_path / "t.normalcy")
    table = tmp_path / "rows.csv"
    np.savetxt(table, rng.normal(size=(5, 3)), delimiter=",", header="a,b,c", comments="")
    assert main(["predict", str(model), str(table), "-o", str(tmp_path / "o"), "--groups", "subfolders"]) != EXIT_OK
    assert "--groups applies to image models" in capsys.readouterr().err
