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


def test_predict_loses_nothing(model, category, tmp_path, capsys):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for p in sorted((category / "test/blob").iterdir())[:2] + sorted((category / "test/good").iterdir())[:2]:
        (inputs / p.name.replace(".png", f"_{p.parent.name}.png")).write_bytes(p.read_bytes())
    (inputs / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "out"
    code = main(["predict", str(model), str(inputs), str(tmp_path / "missing.png"), "-o", str(out) + "/", "--images"])
    assert code == EXIT_SOME_FAILED
    printed = capsys.readouterr()
    failed_lines = [line for line in printed.err.splitlines() if line.startswith("failed: ")]
    assert len(failed_lines) == 2  # each failed input and its reason on the console, not only in results.csv
    assert any("corrupt.png" in line for line in failed_lines) and any("not found" in line for line in failed_lines)
    summary = printed.out.strip().splitlines()[-1]
    assert summary.startswith("4 scored, ") and " 2 failed; results in " in summary
    assert f"{out}/results.csv" in summary and "//" not in summary
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


def test_predict_failures_are_capped_with_a_count(tmp_path, capsys):
    from normalcy.apps.cli.predict import report_run

    rows = [{"path": f"in/{i}.png", "status": "error", "error": f"reason {i}"} for i in range(7)]
    rows += [{"path": "in/a.png", "status": "ok", "is_anomaly": True}, {"path": "in/b.png", "status": "ok",
                                                                        "is_anomaly": False}]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    report_run(tmp_path, n_rows=9, n_failed=7, max_listed=3)
    printed = capsys.readouterr()
    assert printed.err.splitlines() == ["failed: in/0.png: reason 0", "failed: in/1.png: reason 1",
                                        "failed: in/2.png: reason 2",
                                        f"... and 4 more failed inputs (status=error rows in {tmp_path}/results.csv)"]
    assert printed.out.startswith("2 scored, 1 flagged, 7 failed; results in ")


@pytest.mark.parametrize("param, expected", [
    ("coreset_ration=0.05", ["coreset_ration", "did you mean 'coreset_ratio'", "valid names:", "image_size"]),
    ("coreset_ratio=abc", ["coreset_ratio", "expects a number"]),
    ("image_size=1.5", ["image_size", "expects a whole number"]),
    ("progress=3", ["progress", "true or false"]),
])
def test_bad_param_is_one_line_exit_2(param, expected, category, tmp_path, capsys):
    for cmd in (["fit", str(category), "-o", str(tmp_path / "m.normalcy")], ["bench", str(category)]):
        assert main([*cmd, "--param", param]) == EXIT_ERROR
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("normalcy: error: --param ")
        assert all(e in err for e in expected), err


def test_failed_output_write_is_one_line_exit_2(model, category, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert main(["predict", str(model), str(category / "test" / "good"), "-o", str(blocker / "out")]) == EXIT_ERROR
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("normalcy: error: ") and "a_file" in err
    assert main(["fit", str(category), "-o", str(blocker / "m.normalcy"), *SMALL]) == EXIT_ERROR
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "a_file" in err and "Traceback" not in err


def test_corrupt_table_file_is_one_line_exit_2(tmp_path, capsys):
    (tmp_path / "broken.parquet").write_bytes(b"PAR1" + b"\0" * 64)
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 truncated")
    for pattern in ("*.parquet", "*.npz"):
        code = main(["bench-vector", str(tmp_path), "--datasets", pattern, "--no-pyod", "--quiet", "--seeds", "1"])
        assert code == EXIT_ERROR
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "broken." in err and err.startswith("normalcy: error: "), err


def test_demo_prints_a_table_that_fits_100_columns(tmp_path):
    from normalcy.apps.demo import run_demo

    lines: list[str] = []
    rows = run_demo(tmp_path / "demo", echo=lambda text: lines.extend(str(text).splitlines()),
                    categories=("tiles",), n_train=20, n_test_good=3, n_test_defect_per_type=2, size=64)
    assert rows and (tmp_path / "demo" / "overlays" / "tiles").is_dir()
    table = lines[lines.index(next(line for line in lines if line.startswith("category"))):][:2]
    assert max(len(line) for line in table) <= 100 and "None" not in "\n".join(lines)
    assert table[1].split()[:2] == ["tiles", "patchcore"]


def test_demo_backbone_option_reaches_the_detector(monkeypatch, tmp_path):
    import normalcy.apps.demo as demo_module
    from normalcy.apps.cli.main import main

    seen: list[dict] = []

    def stop_at_the_detector(name, **params):
        seen.append(params)
        raise RuntimeError("stop")

    monkeypatch.setattr(demo_module, "create_detector", stop_at_the_detector)
    with pytest.raises(RuntimeError, match="stop"):
        main(["demo", "-o", str(tmp_path / "d"), "--backbone", "efficientnet_lite2"])
    assert seen and seen[0]["backbone"] == "efficientnet_lite2"


def test_bench_table_keeps_long_category_names_within_100_columns():
    from normalcy.apps.bench.images import format_table

    row = {"category": "a_rather_long_category_name", "detector": "patchcore", "image_auroc": 0.93, "image_ap": 0.9,
           "pixel_auroc": float("nan"), "aupro": None, "fit_s": 1234.5, "predict_ms_median": 45.6,
           "calibration": {"0.01": {"fpr": 0.01, "tpr": 0.5}, "0.05": {"fpr": 0.05, "tpr": 0.7}}}
    text = format_table([row, {**row, "category": "b", "detector": "gaussian"}])
    assert max(len(line) for line in text.splitlines()) <= 100
    assert "a_rather_long_category_name" in text and "None" not in text and "n/a" in text
