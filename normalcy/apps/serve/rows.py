"""`normalcy serve` for table, text and series models: `POST /predict` with JSON rows, texts or a series.

Body: `{"rows": [[1.0, 2.5, "a"], ...]}` (table rows in the fitted column order, or objects keyed by column name),
`{"texts": ["...", ...]}`, or `{"series": [[v1, v2], ...]}` (time x channels; a flat list for one channel);
optional `"alpha"`. The answer has one result per row / text / timestamp, in order; a row that cannot be scored
(wrong width, missing or non-numeric cell, empty text) is an error entry with the reason, never "normal".
"""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

from normalcy.apps.serve.settings import ServeSettings


def model_kind(path: Path) -> str:
    """The data kind ("image", "vector", "text", "series") of a model file, from its header only."""
    from safetensors import safe_open

    from normalcy.detectors import detector_class
    from normalcy.store import META_KEY

    with safe_open(str(path), framework="np") as f:
        meta = json.loads((f.metadata() or {}).get(META_KEY, "{}"))
    return getattr(detector_class(meta.get("detector", "")), "kind", "image")


def _problem(value: Any, column: str, categorical: bool) -> str | None:
    if categorical:
        return None if value is not None else f"column {column!r} is missing"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return f"column {column!r} is not a finite number ({value!r})"
    return None


def _table_items(detector: Any, rows: list[Any]) -> tuple[list[Any], list[str | None]]:
    schema = getattr(detector, "input_schema_", None) or {}
    columns = schema.get("columns") or [f"x{j}" for j in range(int(getattr(detector, "n_features_in_", 0)))]
    categorical = set(schema.get("categorical", []))
    items, errors = [], []
    for row in rows:
        if isinstance(row, dict):
            missing = [c for c in columns if c not in row]
            row = None if missing else [row[c] for c in columns]
            problem = f"missing column(s) {missing}" if missing else None
        elif not isinstance(row, list) or len(row) != len(columns):
            problem = f"a row must be a list of {len(columns)} values ({', '.join(columns)})"
            row = None
        else:
            problem = None
        if row is not None:
            problem = next((p for c, v in zip(columns, row) if (p := _problem(v, c, c in categorical))), None)
        items.append(None if problem else row)
        errors.append(problem)
    return items, errors


def predict_json(detector: Any, body: dict[str, Any]) -> list[dict[str, Any]]:
    """One result per input row / text / timestamp (error entries included)."""
    import numpy as np

    from normalcy.errors import DataError

    alpha = body.get("alpha")
    kind = detector.kind
    key = {"vector": "rows", "text": "texts", "series": "series"}[kind]
    data = body.get(key)
    if not isinstance(data, list) or not data:
        raise DataError(f"this {kind} model expects a non-empty list under {key!r}")
    if kind == "text":
        items = data
        errors = [None if isinstance(t, str) and t.strip() else "not a non-empty text" for t in data]
    elif kind == "series":
        items = [r if isinstance(r, list) else [r] for r in data]
        width = int(detector.n_channels_)
        errors = [None if len(r) == width and all(_problem(v, f"channel {j}", False) is None for j, v in
                                                  enumerate(r)) else f"a timestamp needs {width} finite numbers"
                  for r in items]
    else:
        items, errors = _table_items(detector, data)
    good = [i for i, e in enumerate(errors) if e is None]
    preds: dict[int, Any] = {}
    if good:
        chosen = [items[i] for i in good]
        if kind != "text":
            categorical = bool((getattr(detector, "input_schema_", None) or {}).get("categorical"))
            chosen = np.asarray(chosen, dtype=object if categorical else np.float64)
        preds = dict(zip(good, detector.predict(chosen, alpha=alpha)))
    out = []
    for i, err in enumerate(errors):
        if err is not None:
            out.append({"index": i, "score": None, "p_value": None, "is_anomaly": None, "severity": "error",
                        "status": "error", "error": err})
            continue
        d = preds[i].to_dict()
        out.append({"index": i, "score": d["score"], "p_value": d["p_value"], "is_anomaly": d["is_anomaly"],
                    "severity": d["severity"], "status": "ok", "error": ""})
    return out


def create_rows_app(settings: ServeSettings, detector: Any = None) -> Any:
    """A small FastAPI app: GET /health, GET /model, POST /predict (JSON) for a vector/text/series model."""
    from fastapi import Body, FastAPI, HTTPException

    from normalcy.errors import NormalcyError

    state: dict[str, Any] = {"detector": detector}
    app = FastAPI(title="normalcy serve", summary="Anomaly scores for table rows, texts or series (JSON in/out).")

    def det() -> Any:
        if state["detector"] is None:
            from normalcy.store import load

            state["detector"] = load(settings.model_path)
        return state["detector"]

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model_loaded": state["detector"] is not None}

    @app.get("/model")
    async def model() -> dict[str, Any]:
        d = await asyncio.to_thread(det)
        return {"detector": d.name, "kind": d.kind, "default_alpha": float(d.alpha),
                "input_schema": getattr(d, "input_schema_", None), "n_fit": int(getattr(d, "n_fit_", 0) or 0),
                "calibration": {"method": d.calibration_.method, "n": d.calibration_.n}}

    @app.post("/predict")
    async def predict(body: dict[str, Any] = Body(...)) -> dict[str, Any]:  # noqa: B008 (FastAPI's idiom)
        d = await asyncio.to_thread(det)
        try:
            results = await asyncio.to_thread(predict_json, d, body)
        except NormalcyError as exc:
            raise HTTPException(422, str(exc)) from None
        n_err = sum(r["status"] == "error" for r in results)
        return {"detector": d.name, "kind": d.kind, "n_ok": len(results) - n_err, "n_error": n_err,
                "results": results}

    return app
