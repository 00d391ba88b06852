"""Bounded, seeded fuzzing of every input path (a few dozen cases each; benchmarks/fuzz.py runs thousands)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from tests.fuzz_inputs import (
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

N = 40  # cases per input path


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from normalcy.detectors.image.patchcore import PatchCore

    rng = np.random.default_rng(0)
    imgs = [(rng.random((32, 32, 3)) * 255).astype(np.uint8) for _ in range(12)]
    det = PatchCore(image_size=32, progress=False, alpha=0.1).fit(imgs)
    path = det.save(tmp_path_factory.mktemp("model") / "m.normalcy")
    return det, path


def test_fuzzed_images_never_lose_rows_or_pass_as_ok(tiny_model, tmp_path, monkeypatch):
    from normalcy.apps.results import predict_to_folder

    det, _ = tiny_model
    rng = np.random.default_rng(1)
    folder = tmp_path / "in"
    folder.mkdir()
    cases = [image_case(rng, i) for i in range(N)]
    for c in cases:
        materialize(c, folder)
    monkeypatch.chdir(folder)  # relative names: formula-like names reach results.csv as typed
    inputs = [Path(os.fsdecode(os.fsencode(c.name))) for c in cases]
    n, _ = predict_to_folder(det, inputs, tmp_path / "out", batch=8)
    assert n == N
    assert check_predict_rows(tmp_path / "out", inputs, cases) == {"lost_rows": 0, "silent_wrong": 0,
                                                                    "inconsistent": 0, "good_refused": 0}


def test_fuzzed_model_files_are_refused_or_identical(tiny_model, tmp_path):
    from normalcy.store import META_KEY, read_file

    _, path = tiny_model
    data = path.read_bytes()
    meta, arrays = read_file(path)
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as f:
        meta_text = f.metadata()[META_KEY]
    rng = np.random.default_rng(2)
    outcomes = []
    for i in range(N):
        bad, label = model_case(rng, data, meta_text)
        p = tmp_path / f"{i}.normalcy"
        p.write_bytes(bad)
        outcomes.append((label, check_model_load(p, meta, arrays)))
    assert all(o in ("refused", "same") for _, o in outcomes), [x for x in outcomes if x[1] not in ("refused", "same")]


def test_fuzzed_tables_give_typed_errors(tmp_path):
    from normalcy.data.tables import read_table
    from normalcy.errors import NormalcyError

    rng = np.random.default_rng(3)
    bad = []
    for i in range(N):
        path, label = table_case(rng, i, tmp_path)
        try:
            read_table(path)
        except NormalcyError as exc:
            if str(path) not in str(exc):
                bad.append((label, "message does not name the file"))
        except Exception as exc:  # noqa: BLE001
            bad.append((label, type(exc).__name__))
    assert bad == []


@pytest.mark.parametrize("name", ["knn", "mahalanobis", "pca", "iforest", "autoencoder"])
def test_extreme_scales_still_flag_outliers(name):
    rng = np.random.default_rng(4)
    cases = [scale_case(rng) for _ in range(3 if name == "autoencoder" else 8)]
    results = [(c[-1], judge_scales(name, *c[:-1])) for c in cases]
    assert all(r in ("ok", "refused") for _, r in results), results


def test_fuzzed_http_requests(tiny_model):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from normalcy.apps.serve import ServeSettings
    from normalcy.apps.serve.app import create_app

    det, _ = tiny_model
    app = create_app(ServeSettings(max_files=16), detector=det)
    rng = np.random.default_rng(5)
    with TestClient(app, raise_server_exceptions=False) as client:
        problems = []
        for i in range(N):
            kw = http_case(rng, i)
            verdict = check_http(client.request(**kw))
            if verdict != "ok":
                problems.append((kw["url"], verdict))
    assert problems == []
