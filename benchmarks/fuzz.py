"""Fuzz every input path with generated bad inputs and print the tally (issue 20).

    OMP_NUM_THREADS=1 python benchmarks/fuzz.py --n 2000

Paths: image files through `predict` (a tiny PatchCore fitted on synthetic textures, 32 px), model files through
`normalcy.load`, table files through `read_table` plus extreme-scale tables through the vector detectors, and HTTP
requests through the FastAPI app (TestClient, in process). Counted per path: crashes (untyped exceptions or HTTP
5xx), hangs (a run over its time limit), lost rows, and silent wrong answers (a known-broken input scored "ok", a
damaged model that loads with changed content, a detector that stops flagging at another scale, an error row
with a decision). The generators live in tests/fuzz_inputs.py (the test suite runs a few dozen of each).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.fuzz_inputs

from tests.fuzz_inputs import (  # noqa: E402
    check_http,
    check_model_load,
    check_predict_rows,
    http_case,
    image_case,
    judge_scales,
    materialize,
    model_case,
    scale_case,
    table_case,
)

DETECTORS = ("knn", "mahalanobis", "pca", "iforest", "autoencoder")


def tiny_model(folder: Path):
    """PatchCore at 32 px fitted on 12 random textures, and its saved file."""
    from normalcy.detectors.image.patchcore import PatchCore

    rng = np.random.default_rng(0)
    det = PatchCore(image_size=32, progress=False, alpha=0.1).fit(
        [(rng.random((32, 32, 3)) * 255).astype(np.uint8) for _ in range(12)])
    return det, det.save(folder / "m.normalcy")


def run_with_limit(fn, limit: float):
    """(result, error, hung): fn() in a thread, abandoned (counted as a hang) after `limit` seconds."""
    box: dict = {}

    def target():
        try:
            box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - counted as a crash
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(limit)
    return box.get("result"), box.get("error"), t.is_alive()


def fuzz_images(n: int, seed: int, det, work: Path, limit: float) -> Counter:
    from normalcy.apps.results import predict_to_folder

    tally: Counter = Counter(cases=n)
    rng = np.random.default_rng(seed)
    folder = work / "images"
    folder.mkdir()
    cases = [image_case(rng, i) for i in range(n)]
    for c in cases:
        materialize(c, folder)
    inputs = [Path(c.name) for c in cases]
    here = os.getcwd()
    os.chdir(folder)  # relative names, so formula-like names reach results.csv as typed
    try:
        result, error, hung = run_with_limit(lambda: predict_to_folder(det, inputs, work / "out", batch=32), limit)
    finally:
        os.chdir(here)
    if hung:
        tally["hangs"] += 1
        return tally
    if error is not None:
        tally["crashes"] += 1
        print(f"  images: predict raised {type(error).__name__}: {error}")
        return tally
    os.chdir(folder)  # rows name the inputs as given (relative)
    try:
        checks = check_predict_rows(work / "out", inputs, cases)
    finally:
        os.chdir(here)
    tally["lost_rows"] += checks["lost_rows"]
    tally["silent_wrong"] += checks["silent_wrong"]
    tally["inconsistent_rows"] += checks["inconsistent"]
    tally["good_refused"] += checks["good_refused"]  # a valid image reported as an error (not a lost row)
    tally["error_rows"] += result[1]
    tally.update(f"label:{c.label}" for c in cases)
    tally["good_score_drift"] = _good_scores_drift(det, folder, inputs, cases, work / "out")
    return tally


def _good_scores_drift(det, folder: Path, inputs, cases, out: Path) -> int:
    """Count good images whose score in the hostile batch differs (> 1e-4) from their score alone."""
    import json

    rows = {r["path"]: r for r in map(json.loads, (out / "results.jsonl").read_text(encoding="utf-8").splitlines())}
    good = [(p, c) for p, c in zip(inputs, cases) if c.label == "good"][:50]
    drift = 0
    for p, _ in good:
        alone = det.predict([folder / p])[0].score
        shown = os.fsencode(p).decode("utf-8", "backslashreplace")
        if rows.get(shown, {}).get("score") is None or abs(rows[shown]["score"] - alone) > 1e-4:
            drift += 1
    return drift


def fuzz_models(n: int, seed: int, model_path: Path, work: Path) -> Counter:
    from safetensors import safe_open

    from normalcy.store import META_KEY, read_file

    tally: Counter = Counter(cases=n)
    data = model_path.read_bytes()
    meta, arrays = read_file(model_path)
    with safe_open(str(model_path), framework="np") as f:
        meta_text = f.metadata()[META_KEY]
    rng = np.random.default_rng(seed)
    folder = work / "models"
    folder.mkdir()
    for i in range(n):
        bad, label = model_case(rng, data, meta_text)
        p = folder / "bad.normalcy"
        p.write_bytes(bad)
        outcome = check_model_load(p, meta, arrays)
        tally[outcome if not outcome.startswith("crash") else "crashes"] += 1
        if outcome.startswith("crash") or outcome == "silent-change":
            print(f"  model case {i} ({label}): {outcome}")
        if outcome == "silent-change":
            tally["silent_wrong"] += 1
    return tally


def fuzz_tables(n: int, n_scales: int, seed: int, work: Path) -> Counter:
    from normalcy.data.tables import read_table
    from normalcy.errors import NormalcyError

    tally: Counter = Counter(cases=n + n_scales)
    rng = np.random.default_rng(seed)
    folder = work / "tables"
    folder.mkdir()
    for i in range(n):
        path, label = table_case(rng, i, folder)
        try:
            read_table(path)
            tally["read"] += 1
        except NormalcyError as exc:
            tally["refused"] += 1
            if str(path) not in str(exc):
                tally["message_without_file"] += 1
        except Exception as exc:  # noqa: BLE001
            tally["crashes"] += 1
            print(f"  table case {i} ({label}): {type(exc).__name__}: {exc}")
    for i in range(n_scales):
        name = DETECTORS[i % len(DETECTORS)]
        *case, desc = scale_case(rng)
        verdict = judge_scales(name, *case)
        if verdict.startswith("crash"):
            tally["crashes"] += 1
        elif verdict not in ("ok", "refused"):
            tally["silent_wrong"] += 1
            print(f"  scale case {i} {name} {desc}: {verdict}")
        tally[f"scale:{verdict if verdict in ('ok', 'refused') else 'wrong'}"] += 1
    return tally


def fuzz_http(n: int, seed: int, det) -> Counter:
    from fastapi.testclient import TestClient

    from normalcy.apps.serve import ServeSettings
    from normalcy.apps.serve.app import create_app

    tally: Counter = Counter(cases=n)
    rng = np.random.default_rng(seed)
    app = create_app(ServeSettings(max_files=16), detector=det)
    with TestClient(app, raise_server_exceptions=False) as client:
        for i in range(n):
            kw = http_case(rng, i)
            resp = client.request(**kw)
            verdict = check_http(resp)
            tally[f"status:{resp.status_code}"] += 1
            if verdict.startswith("status 5"):
                tally["crashes"] += 1
            elif verdict != "ok":
                tally["silent_wrong"] += 1
            if verdict != "ok":
                print(f"  http case {i} {kw['method']} {kw['url']}: {verdict}: {resp.text[:160]}")
    return tally


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="generated inputs per path (default 2000)")
    ap.add_argument("--scale-cases", type=int, default=None, help="extreme-scale tables (default n/4)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=float, default=1800.0, help="seconds before the image run counts as a hang")
    ap.add_argument("--paths", default="images,models,tables,http", help="comma-separated subset")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    logging.disable(logging.CRITICAL)  # the service logs each refused request; the tally is what counts
    import torch

    torch.set_num_threads(1)
    paths = args.paths.split(",")
    results: dict[str, Counter] = {}
    with tempfile.TemporaryDirectory(prefix="normalcy-fuzz-") as tmp:
        work = Path(tmp)
        det, model_path = tiny_model(work)
        for path in paths:
            start = time.perf_counter()
            sub = work / path
            sub.mkdir()
            if path == "images":
                results[path] = fuzz_images(args.n, args.seed + 1, det, sub, args.limit)
            elif path == "models":
                results[path] = fuzz_models(args.n, args.seed + 2, model_path, sub)
            elif path == "tables":
                n_scales = args.n // 4 if args.scale_cases is None else args.scale_cases
                results[path] = fuzz_tables(args.n, n_scales, args.seed + 3, sub)
            elif path == "http":
                results[path] = fuzz_http(args.n, args.seed + 4, det)
            results[path]["seconds"] = round(time.perf_counter() - start)
            print(f"{path}: done in {results[path]['seconds']} s", flush=True)
    print()
    print(f"{'path':8} {'cases':>6} {'crashes':>8} {'hangs':>6} {'lost rows':>10} {'silent wrong':>13} {'seconds':>8}")
    for path, t in results.items():
        print(f"{path:8} {t['cases']:>6} {t['crashes']:>8} {t['hangs']:>6} {t['lost_rows']:>10} "
              f"{t['silent_wrong'] + t['inconsistent_rows']:>13} {t['seconds']:>8}")
    for path, t in results.items():
        extra = {k: v for k, v in sorted(t.items()) if k not in
                 ("cases", "crashes", "hangs", "lost_rows", "silent_wrong", "inconsistent_rows", "seconds")}
        print(f"  {path} details: {extra}")
    bad = sum(t["crashes"] + t["hangs"] + t["lost_rows"] + t["silent_wrong"] + t["inconsistent_rows"]
              for t in results.values())
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
