"""`normalcy bench-vector` main(): JSON shape on tiny synthetic folders (no PyOD, no shared data)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from normalcy.apps.bench.vector import main


def write_set(path, seed: int, n: int = 240, d: int = 4) -> None:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = np.zeros(n, dtype=np.int64)
    y[:24] = 1
    X[:24] += 5.0
    np.savez(path, X=X, y=y)


def test_tabular_json_shape(tmp_path, capsys):
    folder = tmp_path / "sets"
    folder.mkdir()
    write_set(folder / "a.npz", 0)
    write_set(folder / "b.npz", 1)
    out = tmp_path / "out.json"
    code = main(
        [
            str(folder),
            "--no-pyod",
            "--seeds",
            "2",
            "--detectors",
            "knn,ecod,pca,mahalanobis",
            "--json",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    data = json.loads(out.read_text())
    assert list(data) == ["results"]
    rows = data["results"]
    assert len(rows) == 2 * 4  # datasets x detectors (one library)
    for r in rows:
        assert {"dataset", "library", "detector", "auroc", "ap", "seconds"} <= set(r)
        assert r["library"] == "normalcy" and r["dataset"] in ("a", "b")
        assert 0.75 < r["auroc"] <= 1 and 0 < r["ap"] <= 1 and r["seconds"] > 0
    printed = capsys.readouterr().out
    assert "mean over datasets" in printed and "knn" in printed


def test_bad_arguments(tmp_path):
    assert main([]) == 2
    assert main([str(tmp_path / "nope"), "--no-pyod"]) == 2
    assert main([str(tmp_path), "--no-pyod", "--detectors", "banana"]) == 2


def test_text_and_series_modes(tmp_path, monkeypatch):
    from normalcy.features import minilm

    monkeypatch.setattr(minilm, "available", lambda: False)  # keep the test fast: no MiniLM / fused rows
    from normalcy.apps.bench import vector as bench_vector

    # and no matrix-profile rows (stumpy's numba compile takes minutes); its z-normalized distance is tested below
    monkeypatch.setattr(bench_vector, "stumpy_missing_reason", lambda: "skipped in this test")
    rng = np.random.default_rng(0)
    lines = [
        f"ham\tsee you at {rng.integers(1, 12)} for the {rng.choice(['demo', 'review', 'lunch'])}"
        for _ in range(120)
    ]
    lines += [f"spam\tWIN {rng.integers(100, 999)} FREE prize call now" for _ in range(20)]
    sms = tmp_path / "sms"
    sms.write_text("\n".join(lines) + "\n", encoding="utf-8")
    nab = tmp_path / "nab"
    (nab / "data" / "cat").mkdir(parents=True)
    (nab / "labels").mkdir()
    values = np.sin(np.arange(800) / 8.0)
    values[600:610] += 3
    rows = ["timestamp,value"] + [
        f"2014-01-0{1 + i // 1440} {i // 60 % 24:02d}:{i % 60:02d}:00,{v:.5f}" for i, v in enumerate(values)
    ]
    (nab / "data" / "cat" / "s.csv").write_text("\n".join(rows) + "\n")
    start, end = rows[601].split(",")[0], rows[615].split(",")[0]
    (nab / "labels" / "combined_windows.json").write_text(json.dumps({"cat/s.csv": [[start, end]]}))
    out = tmp_path / "o.json"
    assert (
        main(
            [
                "--text",
                str(sms),
                "--series",
                str(nab),
                "--seeds",
                "1",
                "--window",
                "16",
                "--json",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    rows = json.loads(out.read_text())["results"]
    text = [r for r in rows if r["dataset"] == "sms_spam"]
    assert [r["detector"] for r in text] == ["chars (default)", "word-tfidf+knn"]
    assert all(r["auroc"] > 0.9 for r in text)
    series = {r["library"]: r for r in rows if r["dataset"] == "nab/cat/s.csv"}
    assert series["normalcy"]["auroc"] > 0.8 and "event_f1" in series["normalcy"]
    assert set(series) == {"normalcy", "baseline"}  # no matrix-profile row when stumpy is unavailable



def test_znorm_distance_of_matrix_profile_pairs():
    from normalcy.apps.bench.vector import _znorm_distance

    series = np.array([0.0, 1, 2, 4, 8, 7, 6, 0, 3])
    d = _znorm_distance(series, 3, np.array([0, 1, 5, 6]), np.array([-1, 0, 1, 0]))
    assert np.isnan(d[0])  # no left neighbour
    z = lambda w: (w - w.mean()) / w.std()  # noqa: E731
    assert d[1] == pytest.approx(np.linalg.norm(z(series[1:4]) - z(series[0:3])))
    assert d[2] == pytest.approx(np.linalg.norm(z(series[5:8]) - z(series[1:4])))
    assert d[3] == pytest.approx(np.linalg.norm(z(series[6:9]) - z(series[0:3])))


@pytest.mark.parametrize("name", ["knn", "iforest"])
def test_pyod_factory_names(name):
    from normalcy.apps.bench.vector import PYOD_MODELS

    assert name in PYOD_MODELS
