"""Tables, texts and series on the command line: what `normalcy fit` and `predict` do with a non-image DATA.

`fit`: a table (.csv/.tsv/.parquet/.npz/.mat), a text file (.txt, one document per line) or a CSV text column
(`--text-column`), or a series (CSV with a time column: `--time-column` or `--window`) is read strictly (any
bad cell is an error naming it) and the detector is fitted on its normal rows. The input schema (columns, the
time/text column, categorical columns) is stored in the model file.

`predict`: the model's schema says how to read the inputs; every input row / line / timestamp becomes exactly
one output row (rows in = rows out). A row that cannot be scored (missing or non-numeric cell, wrong number of
fields, empty line) is an error row naming the reason, with no decision: never reported as normal.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from normalcy.errors import DataError, ParameterError, PathNotFoundError

TABLE_SUFFIXES = (".csv", ".tsv", ".parquet", ".pq", ".npz", ".mat")
TEXT_SUFFIXES = (".txt", ".text", ".log")
DEFAULT_DETECTOR = {"table": "knn", "mixed": "mixed", "text": "text", "series": "series"}
IMAGE_DEFAULT = "patchcore"
FIELDS = ("path", "row", "timestamp", "score", "p_value", "is_anomaly", "severity", "status", "error")


def add_fit_options(p: argparse.ArgumentParser) -> None:
    """Options of `normalcy fit` for tables, texts and series (ignored for image folders)."""
    g = p.add_argument_group("tables, texts and series")
    g.add_argument("--columns", help="comma list of the columns to use (default: all but the label/time column)")
    g.add_argument("--label-column", help="0/1 label column (1 = anomaly): dropped; only rows labelled 0 are fitted")
    g.add_argument("--categorical", help="comma list of columns to treat as categorical (default: non-numeric ones)")
    g.add_argument("--text-column", help="CSV column holding one text per row (a .txt file is one text per line)")
    g.add_argument("--time-column", help="series: the CSV's time column (makes DATA a series)")
    g.add_argument("--window", type=int, help="series: window length in rows (makes DATA a series; default 64)")


def modality_of(data: Path, args: argparse.Namespace) -> str:
    """"image", "table", "text" or "series" for a fit DATA argument and its options."""
    if not data.exists():
        raise PathNotFoundError(f"{data} does not exist")
    if data.is_dir():
        return "image"
    suffix = data.suffix.lower()
    if getattr(args, "text_column", None) or suffix in TEXT_SUFFIXES:
        return "text"
    if getattr(args, "time_column", None) or getattr(args, "window", None):
        return "series"
    if suffix in TABLE_SUFFIXES:
        return "table"
    raise DataError(f"{data}: cannot tell what this is; give an image folder, a table ({', '.join(TABLE_SUFFIXES)}),"
                    f" a text file ({', '.join(TEXT_SUFFIXES)}), or a CSV with --text-column or --time-column")


def _names(text: str | None) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()] if text else []


# --- reading ----------------------------------------------------------------------------------------------
@dataclass
class Cells:
    """A file as a header and raw rows of cells, plus the 1-based source line of each row."""

    header: list[str]
    rows: list[list[Any]]
    lines: list[int] = field(default_factory=list)


def read_cells(path: Path) -> Cells:
    """Header and raw cells of a CSV/TSV/Parquet/NPZ/MAT file (no type checks: predict decides per row)."""
    import numpy as np

    suffix = path.suffix.lower()
    if suffix in (".npz", ".mat"):
        from normalcy.data.tables import read_table

        table = read_table(path)
        X = np.asarray(table.X)
        return Cells(list(table.columns), X.tolist(), list(range(1, len(X) + 1)))
    if suffix in (".parquet", ".pq"):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from None
        try:
            t = pq.read_table(path)
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
        cols = [c.to_pylist() for c in t.columns]
        rows = [list(r) for r in zip(*cols)] if cols else []
        return Cells(list(t.column_names), rows, list(range(1, len(rows) + 1)))
    from normalcy.data.tables import sniffed_reader

    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = sniffed_reader(fh)
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path}: the file is empty")
        rows, lines = [], []
        for r in reader:
            if not r or not any(c.strip() for c in r):
                continue
            rows.append(r)
            lines.append(reader.line_num)
    return Cells([h.strip() for h in header], rows, lines)


def _column_index(cells: Cells, name: str, path: Path, what: str) -> int:
    if name in cells.header:
        return cells.header.index(name)
    raise DataError(f"{path}: no {what} {name!r}; columns are {cells.header}")


def _number(cell: Any) -> float | None:
    if cell is None or isinstance(cell, bool):
        return None
    try:
        v = float(cell)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def parse_rows(cells: Cells, schema: dict[str, Any], path: Path) -> tuple[list[Any], list[str | None]]:
    """Each row's feature values in the schema's column order, or the reason it cannot be scored."""
    idx = [_column_index(cells, c, path, "column") for c in schema["columns"]]
    categorical = set(schema.get("categorical", []))
    values, errors = [], []
    for r in cells.rows:
        if len(r) != len(cells.header):
            values.append(None)
            errors.append(f"{len(r)} fields but the header has {len(cells.header)}")
            continue
        row, problem = [], None
        for name, j in zip(schema["columns"], idx):
            cell = r[j]
            if name in categorical:
                row.append("" if cell is None else str(cell).strip())
                continue
            v = _number(cell)
            if v is None:
                problem = f"column {name!r} is not a finite number ({cell!r})"
                break
            row.append(v)
        values.append(None if problem else row)
        errors.append(problem)
    return values, errors


# --- fit --------------------------------------------------------------------------------------------------
def fit_data(data: Path, modality: str, args: argparse.Namespace) -> tuple[Any, dict[str, Any], str]:
    """The normal items to fit on, the input schema to store, and a one-line description."""
    import numpy as np

    if modality == "text":
        texts = _fit_texts(data, args)
        schema = {"modality": "text", "text_column": getattr(args, "text_column", None)}
        return texts, schema, f"{len(texts)} texts from {data}"
    cells = read_cells(data)
    label = getattr(args, "label_column", None)
    time_col = getattr(args, "time_column", None) if modality == "series" else None
    if modality == "series" and time_col is None and cells.header and _number(cells.rows[0][0]) is None:
        time_col = cells.header[0]  # a first column that is not a number is the time column
    skip = {c for c in (label, time_col) if c}
    columns = _names(getattr(args, "columns", None)) or [c for c in cells.header if c not in skip]
    for c in [*columns, *skip]:
        _column_index(cells, c, data, "column")
    named_cat = _names(getattr(args, "categorical", None))
    categorical = named_cat or [c for c in columns if any(
        _number(r[cells.header.index(c)]) is None for r in cells.rows if len(r) == len(cells.header))]
    schema = {"modality": modality, "columns": columns, "categorical": categorical, "label_column": label,
              "time_column": time_col}
    values, errors = parse_rows(cells, schema, data)
    bad = [(cells.lines[i], e) for i, e in enumerate(errors) if e]
    if bad:
        line, reason = bad[0]
        raise DataError(f"{data}: {len(bad)} row(s) cannot be used for fitting; first at line {line}: {reason}")
    keep = list(range(len(values)))
    if label:
        from normalcy.data.tables import _labels

        j = cells.header.index(label)
        y = _labels(np.asarray([r[j] for r in cells.rows], dtype=object), data, label)
        keep = [i for i in keep if y[i] == 0]
    if modality == "series" and categorical:
        raise DataError(f"{data}: series value columns must be numbers; not numeric: {categorical}")
    X = np.asarray([values[i] for i in keep], dtype=object if categorical else np.float64)
    what = f"{len(X)} {'normal ' if label else ''}rows x {len(columns)} columns"
    if categorical:
        what += f" ({len(categorical)} categorical: {', '.join(categorical[:5])})"
    return X, schema, f"{what} from {data}"


def _fit_texts(data: Path, args: argparse.Namespace) -> list[str]:
    if getattr(args, "text_column", None):
        cells = read_cells(data)
        j = _column_index(cells, args.text_column, data, "text column")
        texts = [r[j] for r in cells.rows if len(r) == len(cells.header) and str(r[j]).strip()]
    else:
        texts = [t for t in _text_lines(data) if t.strip()]
    if len(texts) < 2:
        raise DataError(f"{data}: needs at least 2 non-empty texts to fit, found {len(texts)}")
    return texts


def _text_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc})") from None


def default_detector(modality: str, schema: dict[str, Any], requested: str) -> str:
    """The detector to fit: what was asked, or this modality's default when the image default was left."""
    if requested != IMAGE_DEFAULT:
        return requested
    if modality == "table" and schema.get("categorical"):
        return DEFAULT_DETECTOR["mixed"]
    return DEFAULT_DETECTOR[modality]


def detector_params_for(name: str, modality: str, schema: dict[str, Any], params: dict[str, Any],
                        args: argparse.Namespace) -> dict[str, Any]:
    """Fill in what the data implies (the series window); refuse a numeric detector on categorical columns."""
    out = {k: v for k, v in params.items() if k not in ("image_size", "backbone", "weights", "resize_mode")}
    if name == "series" and getattr(args, "window", None):
        out.setdefault("window", int(args.window))
    if modality == "table" and schema.get("categorical") and name not in ("mixed", "categorical"):
        raise ParameterError(f"--detector {name} needs numeric columns but {schema['categorical']} are not numbers; "
                             "use --detector mixed (the default for such tables), --columns to pick numeric ones, "
                             "or --categorical")
    return out


def fit_modality(data: Path, modality: str, args: argparse.Namespace) -> Any:
    """`normalcy fit` for a table, text or series: read, build the detector, fit, store the schema, save."""
    from normalcy.apps.cli.common import build_detector, detector_params

    items, schema, what = fit_data(data, modality, args)
    name = default_detector(modality, schema, args.detector)
    det = build_detector(name, detector_params_for(name, modality, schema, detector_params(args), args))
    print(f"fitting {name} on {what}")
    det.fit(items)
    det.input_schema_ = schema
    return det


# --- predict ----------------------------------------------------------------------------------------------
def is_modality_model(model: Any) -> bool:
    """True for a loaded vector/text/series detector."""
    return getattr(model, "kind", "image") in ("vector", "text", "series")


def predict_rows(model: Any, inputs: list[str], alpha: float | None = None) -> list[dict[str, Any]]:
    """One output row per input row / line / timestamp of every input file (error rows included)."""
    out: list[dict[str, Any]] = []
    schema = getattr(model, "input_schema_", None) or {}
    for raw in inputs:
        path = Path(raw)
        try:
            if not path.is_file():
                raise PathNotFoundError(f"{path} is not a file")
            if model.kind == "text":
                out += _predict_texts(model, path, schema, alpha)
            elif model.kind == "series":
                out += _predict_series(model, path, schema, alpha)
            else:
                out += _predict_table(model, path, schema, alpha)
        except (DataError, OSError) as exc:
            out.append(_error(path, None, str(exc)))
    return out


def _error(path: Path, row: int | None, reason: str, timestamp: Any = None) -> dict[str, Any]:
    from normalcy.apps.results import error_row

    return {**error_row(path, f"line {row}: {reason}" if row is not None else reason), "row": row,
            "timestamp": timestamp}


def _scored(path: Path, rows: list[int], preds: list[Any], timestamps: list[Any] | None = None) -> list[dict]:
    out = []
    for i, (row, p) in enumerate(zip(rows, preds)):
        d = p.to_dict()
        out.append({"path": str(path), "row": row, "timestamp": timestamps[i] if timestamps else None,
                    "score": d["score"], "p_value": d["p_value"], "is_anomaly": d["is_anomaly"],
                    "severity": d["severity"], "status": "ok", "error": ""})
    return out


def _merge(path: Path, lines: list[int], errors: list[str | None], good_rows: list[dict],
           timestamps: list[Any] | None = None) -> list[dict]:
    """Input order restored: scored rows and error rows interleaved as they came in."""
    it = iter(good_rows)
    out = []
    for i, (line, err) in enumerate(zip(lines, errors)):
        ts = timestamps[i] if timestamps else None
        out.append(_error(path, line, err, ts) if err else next(it))
    return out


def _predict_table(model: Any, path: Path, schema: dict[str, Any], alpha: float | None) -> list[dict]:
    import numpy as np

    cells = read_cells(path)
    if not schema:  # a model fitted in Python: columns by position
        n = int(getattr(model, "n_features_in_", len(cells.header)))
        schema = {"columns": cells.header[:n], "categorical": []}
    values, errors = parse_rows(cells, schema, path)
    good = [i for i, e in enumerate(errors) if e is None]
    rows: list[dict] = []
    if good:
        dtype = object if schema.get("categorical") else np.float64
        X = np.asarray([values[i] for i in good], dtype=dtype)
        rows = _scored(path, [cells.lines[i] for i in good], model.predict(X, alpha=alpha))
    return _merge(path, cells.lines, errors, rows)


def _predict_texts(model: Any, path: Path, schema: dict[str, Any], alpha: float | None) -> list[dict]:
    column = schema.get("text_column")
    if column and path.suffix.lower() not in TEXT_SUFFIXES:
        cells = read_cells(path)
        j = _column_index(cells, column, path, "text column")
        lines = cells.lines
        texts = [str(r[j]) if len(r) == len(cells.header) else None for r in cells.rows]
    else:
        texts = _text_lines(path)
        lines = list(range(1, len(texts) + 1))
    errors = ["wrong number of fields" if t is None else "empty text" if not t.strip() else None for t in texts]
    good = [i for i, e in enumerate(errors) if e is None]
    rows = _scored(path, [lines[i] for i in good], model.predict([texts[i] for i in good], alpha=alpha)) if good else []
    return _merge(path, lines, errors, rows)


def _predict_series(model: Any, path: Path, schema: dict[str, Any], alpha: float | None) -> list[dict]:
    import numpy as np

    cells = read_cells(path)
    time_col = schema.get("time_column")
    columns = schema.get("columns") or [c for c in cells.header if c != time_col][: int(model.n_channels_)]
    values, errors = parse_rows(cells, {"columns": columns, "categorical": []}, path)
    tj = cells.header.index(time_col) if time_col in cells.header else None
    stamps = [r[tj] if tj is not None and len(r) > tj else None for r in cells.rows]
    good = [i for i, e in enumerate(errors) if e is None]
    need = int(model.window) + int(model.difference)
    if len(good) < need:
        reason = f"the series has {len(good)} usable rows; window={model.window} needs at least {need}"
        return [_error(path, line, errors[i] or reason, stamps[i]) for i, line in enumerate(cells.lines)]
    series = np.asarray([values[i] for i in good], dtype=np.float64)
    rows = _scored(path, [cells.lines[i] for i in good], model.predict(series, alpha=alpha), [stamps[i] for i in good])
    return _merge(path, cells.lines, errors, rows, stamps)


def write_results(rows: list[dict[str, Any]], out: Path) -> tuple[int, int]:
    """results.csv and results.jsonl (one line per row); returns (rows, failed rows)."""
    from normalcy.apps.results import csv_safe

    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.csv", "w", newline="", encoding="utf-8") as fc, \
            open(out / "results.jsonl", "w", encoding="utf-8") as fj:
        writer = csv.DictWriter(fc, fieldnames=FIELDS, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: csv_safe("" if r.get(k) is None else r.get(k)) for k in FIELDS})
            fj.write(json.dumps({k: r.get(k) for k in FIELDS}) + "\n")
    return len(rows), sum(r["status"] == "error" for r in rows)
