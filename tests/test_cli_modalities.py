"""`normalcy fit/predict` on a table (CSV with a categorical and a label column), a text file and a series:
rows in = rows out, bad rows are error rows with a reason (never "normal"), and the model file round-trips."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from normalcy.apps.cli import EXIT_ERROR, EXIT_OK, EXIT_SOME_FAILED, main


def _rows(out):
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    jsonl = [json.loads(line) for line in open(out / "results.jsonl")]
    assert len(rows) == len(jsonl)
    return rows, jsonl


@pytest.fixture()
def table(tmp_path):
    rng = np.random.default_rng(0)
    normal = tmp_path / "normal.csv"
    lines = ["amount,duration,kind,label"]
    lines += [f"{a:.4f},{b:.4f},{'ab'[i % 2]},0" for i, (a, b) in enumerate(rng.normal(size=(300, 2)))]
    lines += ["50,50,a,1"]  # a labelled anomaly: dropped from the fit
    normal.write_text("\n".join(lines) + "\n")
    new = tmp_path / "new.csv"
    new.write_text("amount,duration,kind,label\n0.1,0.2,a,0\n9,9,b,1\n0.1,,a,0\n0.1,abc,b,0\n0.1,0.2\n")
    return normal, new


def test_table_fit_predict_rows_in_rows_out(table, tmp_path, capsys):
    normal, new = table
    model = tmp_path / "t.normalcy"
    assert main(["fit", str(normal), "-o", str(model), "--label-column", "label"]) == EXIT_OK
    assert "fitting mixed on 300 normal rows x 3 columns (1 categorical: kind)" in capsys.readouterr().out
    out = tmp_path / "out"
    assert main(["predict", str(model), str(new), "-o", str(out)]) == EXIT_SOME_FAILED
    rows, jsonl = _rows(out)
    assert [r["row"] for r in rows] == ["2", "3", "4", "5", "6"]  # one output row per input row, in order
    assert [r["status"] for r in rows] == ["ok", "ok", "error", "error", "error"]
    assert rows[1]["is_anomaly"] == "True" and rows[0]["is_anomaly"] == "False"
    assert "'duration' is not a finite number" in rows[2]["error"] and "fields" in rows[4]["error"]
    assert all(j["is_anomaly"] is None and j["severity"] == "error" for j in jsonl[2:])
    err = capsys.readouterr().err
    assert "failed: " in err and "line 4" in err


def test_numeric_table_and_detector_choice(tmp_path):
    X = np.random.default_rng(1).normal(size=(200, 3))
    path = tmp_path / "x.npz"
    np.savez(path, X=X, y=np.zeros(200))
    model = tmp_path / "iforest.normalcy"
    assert main(["fit", str(path), "-o", str(model), "--detector", "iforest"]) == EXIT_OK
    out = tmp_path / "o"
    assert main(["predict", str(model), str(path), "-o", str(out)]) == EXIT_OK
    assert len(_rows(out)[0]) == 200
    csv_path = tmp_path / "cat.csv"
    csv_path.write_text("a,b\n1,x\n2,y\n3,x\n")
    assert main(["fit", str(csv_path), "-o", str(tmp_path / "k.normalcy"), "--detector", "knn"]) == EXIT_ERROR


def test_text_file_fit_predict(tmp_path):
    normal = tmp_path / "normal.txt"
    normal.write_text("".join(f"meeting moved to {i % 12 + 1} pm in room {i % 7}\n" for i in range(150)))
    new = tmp_path / "new.txt"
    new.write_text("meeting moved to 3 pm in room 2\n\nWIN A FREE CRUISE!!! text CLAIM to 80085 now\n")
    model = tmp_path / "text.normalcy"
    assert main(["fit", str(normal), "-o", str(model)]) == EXIT_OK
    out = tmp_path / "out"
    assert main(["predict", str(model), str(new), "-o", str(out)]) == EXIT_SOME_FAILED
    rows, _ = _rows(out)
    assert [r["status"] for r in rows] == ["ok", "error", "ok"] and rows[1]["error"] == "line 2: empty text"
    assert rows[2]["is_anomaly"] == "True" and rows[0]["is_anomaly"] == "False"


def test_csv_text_column(tmp_path):
    normal = tmp_path / "msgs.csv"
    normal.write_text("id,body\n" + "".join(f"{i},see you at {i % 9} in room {i % 5}\n" for i in range(120)))
    model = tmp_path / "m.normalcy"
    assert main(["fit", str(normal), "-o", str(model), "--text-column", "body"]) == EXIT_OK
    new = tmp_path / "new.csv"
    new.write_text("id,body\n1,see you at 3 in room 2\n2,CLAIM YOUR PRIZE http://x.example NOW\n")
    out = tmp_path / "out"
    assert main(["predict", str(model), str(new), "-o", str(out)]) == EXIT_OK
    assert [r["is_anomaly"] for r in _rows(out)[0]] == ["False", "True"]


def test_multivariate_series(tmp_path):
    noise = np.random.default_rng(0).normal(scale=0.05, size=(800, 2))
    fit = tmp_path / "s.csv"
    fit.write_text("timestamp,cpu,mem\n" + "".join(
        f"2026-01-01T{i // 60:02d}:{i % 60:02d}:00,{np.sin(i / 10) + noise[i, 0]:.4f},"
        f"{np.cos(i / 10) + noise[i, 1]:.4f}\n" for i in range(600)))
    model = tmp_path / "series.normalcy"
    assert main(["fit", str(fit), "-o", str(model), "--time-column", "timestamp", "--window", "16"]) == EXIT_OK
    lines = []
    for i in range(600, 800):
        mem = np.cos(i / 10) + noise[i, 1] + (3.0 if 700 <= i < 710 else 0.0)  # anomaly in the 2nd channel only
        cpu = "NaN" if i == 650 else f"{np.sin(i / 10) + noise[i, 0]:.4f}"
        lines.append(f"2026-01-02T{(i - 600) // 60:02d}:{i % 60:02d}:00,{cpu},{mem:.4f}")
    new = tmp_path / "new.csv"
    new.write_text("timestamp,cpu,mem\n" + "\n".join(lines) + "\n")
    out = tmp_path / "out"
    assert main(["predict", str(model), str(new), "-o", str(out)]) == EXIT_SOME_FAILED
    rows, _ = _rows(out)
    assert len(rows) == 200 and rows[50]["status"] == "error" and rows[50]["timestamp"].startswith("2026-01-02")
    flagged = [i for i, r in enumerate(rows) if r["is_anomaly"] == "True"]
    assert any(100 <= i < 110 for i in flagged)
    assert not any(i >= 130 for i in flagged)  # calm after the anomaly (windows spread it by < 16 rows)


def test_parquet_table(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    X = np.random.default_rng(2).normal(size=(150, 2))
    pq.write_table(pa.table({"a": X[:, 0], "b": X[:, 1]}), tmp_path / "fit.parquet")
    pq.write_table(pa.table({"a": [0.0, 8.0, None], "b": [0.0, 8.0, 1.0]}), tmp_path / "new.parquet")
    model = tmp_path / "p.normalcy"
    assert main(["fit", str(tmp_path / "fit.parquet"), "-o", str(model), "--columns", "a,b"]) == EXIT_OK
    out = tmp_path / "out"
    assert main(["predict", str(model), str(tmp_path / "new.parquet"), "-o", str(out)]) == EXIT_SOME_FAILED
    rows, _ = _rows(out)
    assert [r["status"] for r in rows] == ["ok", "ok", "error"] and rows[1]["is_anomaly"] == "True"
