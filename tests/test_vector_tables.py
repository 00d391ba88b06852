"""`read_table`: CSV (numeric + categorical), NPZ, ODDS .mat, Parquet, and clear errors naming the file."""

from __future__ import annotations

import numpy as np
import pytest

from normalcy.data.tables import read_table
from normalcy.errors import DataError, PathNotFoundError, ShapeError


def write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_numeric_and_categorical(tmp_path):
    p = write(
        tmp_path / "t.csv",
        "a,color,b,label\n1,red,2.5,0\n2,blue,3.5,0\n3,red,4.5,1\n4,green,,0\n"[:-11] + "\n",
    )
    t = read_table(p, label_column="label")
    assert t.columns == ["a", "color", "b"]
    assert t.categorical == [1] and t.numeric == [0, 2]
    assert t.X.dtype == object and t.X.shape == (3, 3)
    assert t.y.tolist() == [0, 0, 1]
    assert t.normal.shape == (2, 3) and t.anomalies.shape == (1, 3)
    assert t.X[0, 1] == "red" and t.X[2, 2] == 4.5


def test_csv_numeric_only_without_header(tmp_path):
    p = write(tmp_path / "n.csv", "1,2\n3,4\n5,6\n")
    t = read_table(p)
    assert t.X.dtype == np.float64 and t.X.shape == (3, 2) and t.y is None
    assert t.columns == ["x0", "x1"]
    assert t.normal.shape == (3, 2)


def test_csv_errors_name_the_file(tmp_path):
    ragged = write(tmp_path / "ragged.csv", "a,b\n1,2\n3\n")
    with pytest.raises(ShapeError, match="ragged.csv.*line 3"):
        read_table(ragged)
    nan = write(tmp_path / "nan.csv", "a,b\n1,2\n3,nan\n4,5\n")
    with pytest.raises(ShapeError, match="nan.csv.*'b'.*NaN"):
        read_table(nan)
    empty_cell = write(tmp_path / "gap.csv", "a,b\n1,2\n3,\n4,5\n")
    with pytest.raises(ShapeError, match="gap.csv"):
        read_table(empty_cell)
    short = write(tmp_path / "short.csv", "a,b\n1,2\n")
    with pytest.raises(DataError, match="short.csv.*1 row"):
        read_table(short)
    labels = write(tmp_path / "labels.csv", "a,y\n1,0\n2,maybe\n")
    with pytest.raises(DataError, match="labels.csv.*0/1"):
        read_table(labels, label_column="y")
    with pytest.raises(DataError, match="no label column 'z'"):
        read_table(labels, label_column="z")
    with pytest.raises(PathNotFoundError):
        read_table(tmp_path / "missing.csv")
    with pytest.raises(DataError, match="unsupported"):
        read_table(write(tmp_path / "x.xlsx", "nope"))


def test_constant_column_warns_and_is_kept(tmp_path):
    p = write(tmp_path / "c.csv", "a,b\n1,7\n2,7\n3,7\n")
    with pytest.warns(UserWarning, match="constant column.*'b'"):
        t = read_table(p)
    assert t.X.shape == (3, 2)


def test_npz(tmp_path):
    X = np.arange(12, dtype=np.uint8).reshape(6, 2)
    np.savez(tmp_path / "d.npz", X=X, y=np.array([0, 0, 0, 1, 0, 1]))
    t = read_table(tmp_path / "d.npz")
    assert t.X.dtype == np.float64 and t.X.shape == (6, 2)
    assert t.y.tolist() == [0, 0, 0, 1, 0, 1] and t.normal.shape == (4, 2)
    np.savez(tmp_path / "noy.npz", X=X.astype(float))
    assert read_table(tmp_path / "noy.npz").y is None
    np.savez(tmp_path / "bad.npz", A=X)
    with pytest.raises(DataError, match="bad.npz.*'X'"):
        read_table(tmp_path / "bad.npz")
    np.savez(tmp_path / "obj.npz", X=np.array([[1, "a"]], dtype=object), y=np.array([0]))
    with pytest.raises(DataError, match="obj.npz"):
        read_table(tmp_path / "obj.npz")
    np.savez(tmp_path / "len.npz", X=X, y=np.array([0, 1]))
    with pytest.raises(ShapeError, match="len.npz.*2 labels.*6 rows"):
        read_table(tmp_path / "len.npz")
    Xn = X.astype(float)
    Xn[2, 1] = np.inf
    np.savez(tmp_path / "inf.npz", X=Xn, y=np.zeros(6))
    with pytest.raises(ShapeError, match="inf.npz"):
        read_table(tmp_path / "inf.npz")


def test_mat(tmp_path):
    from scipy.io import savemat

    X = np.random.default_rng(0).normal(size=(8, 3))
    savemat(tmp_path / "odds.mat", {"X": X, "y": np.array([[0], [0], [1], [0], [0], [0], [1], [0]])})
    t = read_table(tmp_path / "odds.mat")
    np.testing.assert_allclose(t.X, X)
    assert t.y.tolist() == [0, 0, 1, 0, 0, 0, 1, 0]
    savemat(tmp_path / "nox.mat", {"data": X})
    with pytest.raises(DataError, match="nox.mat.*'X'"):
        read_table(tmp_path / "nox.mat")
    (tmp_path / "junk.mat").write_bytes(b"not a mat file at all")
    with pytest.raises(DataError, match="junk.mat"):
        read_table(tmp_path / "junk.mat")


def test_parquet(tmp_path):
    path = tmp_path / "t.parquet"
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        path.write_bytes(b"PAR1")
        with pytest.raises(DataError, match="t.parquet.*pyarrow"):
            read_table(path)
        return
    pq.write_table(pa.table({"a": [1.0, 2.0, 3.0], "c": ["x", "y", "x"], "label": [0, 1, 0]}), path)
    t = read_table(path, label_column="label")
    assert t.categorical == [1] and t.y.tolist() == [0, 1, 0]


def test_table_feeds_mixed_detector(tmp_path):
    from normalcy.detectors.vector import create_vector_detector

    rng = np.random.default_rng(0)
    lines = ["x,y,kind,label"]
    for i in range(300):
        kind = "a" if i % 2 else "b"
        lines.append(f"{rng.normal():.4f},{rng.normal():.4f},{kind},0")
    lines += ["9.0,9.0,a,1", "0.1,0.0,zzz,1"]
    t = read_table(write(tmp_path / "m.csv", "\n".join(lines) + "\n"), label_column="label")
    det = create_vector_detector("mixed", alpha=0.05).fit(t.normal)
    s = det.score(t.X).scores
    assert s[-2:].min() > np.sort(s[:-2])[-5]
