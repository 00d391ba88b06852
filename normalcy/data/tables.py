"""Read labelled or unlabelled tables (CSV, NPZ, ODDS .mat, Parquet) into one `Table` shape.

Numeric columns become float64; a column with any non-numeric cell is categorical (kept as strings). When a
table has categorical columns, `Table.X` is an object array (use the "mixed" or "categorical" detector);
otherwise it is float64. Constant columns are kept (every detector copes with them) and reported with a
warning. Every error names the file.
"""

from __future__ import annotations

import csv
import math
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from normalcy.errors import DataError, NormalcyError, PathNotFoundError, ShapeError, plain_reason

MIN_ROWS = 2
_TRUE = {"1", "1.0", "true", "yes", "anomaly", "outlier"}
_FALSE = {"0", "0.0", "false", "no", "normal", "inlier"}


@dataclass
class Table:
    """Rows (`X`), optional 0/1 labels (`y`, 1 = anomaly), column names and which columns are categorical."""

    X: np.ndarray
    y: np.ndarray | None
    columns: list[str]
    categorical: list[int] = field(default_factory=list)
    path: str = ""

    @property
    def normal(self) -> np.ndarray:
        """Rows labelled normal (y == 0); all rows when the table has no labels."""
        return self.X if self.y is None else self.X[self.y == 0]

    @property
    def anomalies(self) -> np.ndarray:
        """Rows labelled anomalous (y == 1); none when the table has no labels."""
        return self.X[:0] if self.y is None else self.X[self.y == 1]

    @property
    def numeric(self) -> list[int]:
        """Indices of the numeric columns."""
        return [j for j in range(len(self.columns)) if j not in set(self.categorical)]


def _labels(values: np.ndarray, path: Path, name: str) -> np.ndarray:
    """Turn a label column (0/1, booleans, normal/anomaly words) into an int array of 0/1."""
    out = np.empty(len(values), dtype=np.int64)
    for i, v in enumerate(values):
        text = str(v).strip().lower()
        if text in _TRUE:
            out[i] = 1
        elif text in _FALSE:
            out[i] = 0
        else:
            raise DataError(
                f"{path}: label column {name!r} row {i} has {v!r}; labels must be 0/1 (1 = anomaly)"
            )
    return out


def _to_float(cell: str) -> float | None:
    try:
        return float(cell)
    except ValueError:
        return None


def _numeric_column(cells: list[str]) -> np.ndarray | None:
    """Float array when every non-empty cell parses as a number (empty -> NaN), else None."""
    out = np.empty(len(cells))
    for i, c in enumerate(cells):
        if c.strip() == "":
            out[i] = math.nan
            continue
        v = _to_float(c)
        if v is None:
            return None
        out[i] = v
    return out


def _build(path: Path, names: list[str], columns: list, label_column: str | int | None) -> Table:
    """Common checks and assembly for every format: labels, NaN/inf, row count, constant columns."""
    names = [str(n) for n in names]
    y = None
    if label_column is not None:
        idx = (
            label_column
            if isinstance(label_column, int)
            else (names.index(label_column) if label_column in names else -1)
        )
        if not 0 <= idx < len(names):
            raise DataError(f"{path}: no label column {label_column!r}; columns are {names}")
        y = _labels(np.asarray(columns[idx], dtype=object), path, names[idx])
        names, columns = names[:idx] + names[idx + 1 :], columns[:idx] + columns[idx + 1 :]
    if not columns:
        raise DataError(f"{path}: no feature columns")
    n = len(columns[0])
    if n < MIN_ROWS:
        raise DataError(f"{path}: has {n} row(s); at least {MIN_ROWS} are needed")
    categorical = [j for j, c in enumerate(columns) if np.asarray(c).dtype.kind not in "biuf"]
    for j, c in enumerate(columns):
        if j in categorical:
            continue
        bad = ~np.isfinite(np.asarray(c, dtype=np.float64))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ShapeError(
                f"{path}: column {names[j]!r} has {int(bad.sum())} missing/NaN/inf value(s), "
                f"first at data row {i}; "
                "impute or drop them first"
            )
    constant = [names[j] for j, c in enumerate(columns) if len(np.unique(np.asarray(c))) == 1]
    if constant:
        warnings.warn(
            f"{path}: constant column(s) kept (they carry no information): {constant}", stacklevel=3
        )
    if categorical:
        X = np.empty((n, len(columns)), dtype=object)
        for j, c in enumerate(columns):
            X[:, j] = np.asarray(c, dtype=object if j in categorical else np.float64)
    else:
        X = np.column_stack([np.asarray(c, dtype=np.float64) for c in columns])
    return Table(X=X, y=y, columns=names, categorical=categorical, path=str(path))


def sniffed_reader(fh: TextIO) -> Any:
    """A csv.reader for an open text file whose delimiter (comma, semicolon or tab) is sniffed from its start."""
    sample = fh.read(65536)
    fh.seek(0)
    try:
        dialect = csv.Sniffer().sniff(sample, delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    return csv.reader(fh, dialect)


def _read_csv(path: Path, label_column: str | int | None, header: bool | None) -> Table:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        rows = [r for r in sniffed_reader(fh) if r and any(c.strip() for c in r)]
    if not rows:
        raise DataError(f"{path}: the file holds no rows")
    if header is None:  # a first row without any number is a header
        header = all(_to_float(c) is None for c in rows[0])
    names = [c.strip() for c in rows[0]] if header else [f"x{j}" for j in range(len(rows[0]))]
    body = rows[1:] if header else rows
    width = len(names)
    for i, r in enumerate(body):
        if len(r) != width:
            line = i + 1 + int(header) + 0
            raise ShapeError(
                f"{path}: line {line} has {len(r)} fields but the first row has {width} (ragged rows)"
            )
    cols = [[r[j] for r in body] for j in range(width)]
    columns = []
    for c in cols:
        num = _numeric_column(c)
        columns.append(num if num is not None else np.asarray([v.strip() for v in c], dtype=object))
    return _build(path, names, columns, label_column)


def _read_arrays(path: Path, X: np.ndarray, y: np.ndarray | None, label_column: str | int | None) -> Table:
    X = np.asarray(X)
    if X.ndim != 2:
        raise ShapeError(f"{path}: X must be 2-D (rows x features), got shape {X.shape}")
    if X.dtype.kind not in "biuf":
        raise ShapeError(f"{path}: X must be numeric, got dtype {X.dtype}")
    names = [f"x{j}" for j in range(X.shape[1])]
    columns = [X[:, j].astype(np.float64) for j in range(X.shape[1])]
    if y is not None:
        y = np.asarray(y).reshape(-1)
        if y.size != X.shape[0]:
            raise ShapeError(f"{path}: y has {y.size} labels but X has {X.shape[0]} rows")
        names.append("y")
        columns.append(y)
        label_column = "y"
    return _build(path, names, columns, label_column)


def _read_npz(path: Path, label_column: str | int | None) -> Table:
    try:
        with np.load(path, allow_pickle=False) as data:
            files = sorted(data.files)
            X = data["X"] if "X" in files else None
            y = data["y"] if "y" in files else None
    except ValueError as exc:  # object arrays need pickle: refused on purpose
        raise DataError(f"{path}: cannot read NPZ without pickle ({exc})") from None
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable NPZ file ({exc})") from None
    if X is None:
        raise DataError(f"{path}: NPZ needs an array named 'X' (found {files})")
    return _read_arrays(path, X, y, label_column)


def _read_mat(path: Path, label_column: str | int | None) -> Table:
    from scipy.io import loadmat

    try:
        data = loadmat(path)
    except NotImplementedError:
        raise DataError(f"{path}: MATLAB v7.3 (HDF5) files are not supported; re-save with -v7") from None
    except Exception as exc:  # scipy raises several types for corrupt or truncated files
        raise DataError(f"{path}: not a readable .mat file ({type(exc).__name__}: {exc})") from None
    if "X" not in data:
        keys = sorted(k for k in data if not k.startswith("__"))
        raise DataError(f"{path}: .mat needs a variable named 'X' (found {keys})")
    return _read_arrays(path, data["X"], data.get("y"), label_column)


def _read_parquet(path: Path, label_column: str | int | None) -> Table:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from None
    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid/ArrowIOError for corrupt or truncated files
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
    columns = []
    for col in table.columns:
        arr = col.to_numpy(zero_copy_only=False)
        if arr.dtype.kind in "biuf":
            columns.append(arr.astype(np.float64))
        else:
            columns.append(np.asarray(["" if v is None else str(v) for v in arr], dtype=object))
    return _build(path, list(table.column_names), columns, label_column)


def read_table(path: str | Path, label_column: str | int | None = None, header: bool | None = None) -> Table:
    """Read a .csv/.tsv, .npz (arrays X, y), ODDS .mat (X, y) or .parquet file into a Table.

    `label_column` names (or indexes) the 0/1 label column of CSV/Parquet files; NPZ/MAT use their `y` array.
    `header=None` guesses: a CSV whose first row holds no number has a header.
    """
    path = Path(path)
    if not path.exists():
        raise PathNotFoundError(f"table file not found: {path}")
    suffix = path.suffix.lower()
    readers = {".csv": _read_csv, ".tsv": _read_csv, ".txt": _read_csv, ".npz": _read_npz, ".mat": _read_mat,
               ".parquet": _read_parquet, ".pq": _read_parquet}
    if suffix not in readers:
        raise DataError(f"{path}: unsupported table format {suffix!r}; use .csv, .npz, .mat or .parquet")
    try:
        if readers[suffix] is _read_csv:
            return _read_csv(path, label_column, header)
        return readers[suffix](path, label_column)
    except NormalcyError:
        raise
    except MemoryError:
        raise DataError(f"{path}: too large to read into memory; use a smaller file or fewer rows") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start}); save the table as UTF-8 CSV") from None
    except Exception as exc:  # any other reader failure is a bad file, reported once, naming it
        raise DataError(f"{path}: cannot be read as a table ({type(exc).__name__}: {plain_reason(exc)})") from None
