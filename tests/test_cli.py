"""The command line end to end on a tiny MVTec folder: fit → predict (with a corrupt file) → bench JSON."""

from __future__ import annotations

import csv
import json

import pytest

from normalcy.apps.cli import EXIT_ERROR, EXIT_OK, EXIT_SOME_FAILED, main
from tests.conftest import write_mvtec

SMALL = ["--image-size", "64", "--param", "progress=false"]


@pytest.fixture(scope="module")
def category(tmp_path_factory):
    return write_mvtec(tmp_path_factory.mktemp("mvtec") / "blobs")


@pytest.fixture(scope="module")
def model(category, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "m.normalcy"
    assert main(["fit", str(category), "-o", str(path), *SMALL]) == EXIT_OK
    return path


def test_predict_loses_nothing(model, category, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for p in sorted((category / "test/blob").iterdir())[:2] + sorted((category / "test/good").iterdir())[:2]:
        (inputs / p.name.replace(".png", f"_{p.parent.name}.png")).write_bytes(p.read_bytes())
    (inputs / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "out"
    code = main(["predict", str(model), str(inputs), str(tmp_path / "missing.png"), "-o", str(out)])
    assert code == EXIT_SOME_FAILED
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == 6  # 5 files in the folder + 1 missing path: rows in = rows out
    errors = {r["path"].rsplit("/", 1)[-1]: r["error"] for r in rows if r["status"] == "error"}
    assert set(errors) == {"corrupt.png", "missing.png"}
    assert "corrupt.png" in errors["corrupt.png"] and "not found" in errors["missing.png"]
    ok = [json.loads(line) for line in open(out / "results.jsonl") if '"ok"' in line]
    assert len(ok) == 4 and all((out / r["overlay"]).is_file() and (out / r["mask"]).is_file() for r in ok)
    blob = [r for r in ok if "_blob" in r["path"]]
    good = [r for r in ok if "_good" in r["path"]]
    assert min(r["score"] for r in blob) > max(r["score"] for r in good)


def test_bench_json_shape(category, tmp_path):
    out = tmp_path / "r.json"
    assert main(["bench", str(category), "--detector", "patchcore,gaussian", "--json", str(out),
                 "--timing-images", "2", *SMALL]) == EXIT_OK
    rows = json.loads(out.read_text())["results"]
    assert [r["detector"] for r in rows] == ["patchcore", "gaussian"]
    required = {"category", "detector", "backbone", "image_size", "image_auroc", "image_ap", "image_f1max",
                "pixel_auroc", "aupro", "fit_s", "predict_ms_median", "backbone_ms_median", "peak_rss_mb",
                "n_train", "n_test", "calibration", "n_test_good"}
    assert required <= set(rows[0])
    assert set(rows[0]["calibration"]) == {"0.01", "0.05"} and set(rows[0]["calibration"]["0.05"]) == {"fpr", "tpr"}
    assert rows[0]["image_auroc"] > 0.9 and rows[0]["pixel_auroc"] > 0.8
    assert rows[1]["pixel_auroc"] is None  # gaussian has no map: null, never NaN, in JSON


def test_clear_errors(tmp_path, capsys):
    assert main(["fit", str(tmp_path / "nowhere"), "-o", str(tmp_path / "m.normalcy")]) == EXIT_ERROR
    assert "nowhere" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["bench", str(tmp_path / "empty")]) == EXIT_ERROR
    assert "train/good" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "no.normalcy"), str(tmp_path), "-o", str(tmp_path / "o")]) == EXIT_ERROR
