"""`predict --engine dask`: the local run's rows, none lost when a worker dies; fast failure on a bad address."""

from __future__ import annotations

import csv
import functools
import json
import logging
import os
import sys
import time

import numpy as np
import pytest

distributed = pytest.importorskip(
    "distributed", reason="Dask distributed is not installed: pip install 'normalcy[dask]' to run these tests")
cloudpickle = pytest.importorskip("cloudpickle", reason="cloudpickle (a Dask dependency) is not installed")

from normalcy.apps.cli import EXIT_ERROR, main  # noqa: E402
from normalcy.apps.distributed import predict_distributed, score_chunk  # noqa: E402
from normalcy.apps.results import predict_to_folder  # noqa: E402
from normalcy.detectors import PatchCore  # noqa: E402
from normalcy.errors import ClusterError  # noqa: E402
from tests.conftest import write_mvtec  # noqa: E402

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers need not import this test module


def crash_once(marker: str, key, index, entries, alpha, pixel_fpr):
    """Chunk 1 kills its worker process the first time it runs (the marker file remembers); chunk 3 always raises."""
    if index == 1 and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
    if index == 3:
        raise RuntimeError("chunk 3 always fails")
    return score_chunk(key, index, entries, alpha, pixel_fpr)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny model file and 9 inputs: 8 images (4 defective), one corrupt file; plus one missing path."""
    root = tmp_path_factory.mktemp("dist")
    cat = write_mvtec(root / "blobs", n_train=12, n_good=4, n_bad=4)
    model = PatchCore(image_size=64, progress=False, alpha=0.2).fit(cat / "train/good").save(root / "m.normalcy")
    inputs = root / "inputs"
    inputs.mkdir()
    for p in sorted((cat / "test/good").iterdir()) + sorted((cat / "test/blob").iterdir()):
        (inputs / f"{p.parent.name}_{p.name}").write_bytes(p.read_bytes())
    (inputs / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    return model, [str(inputs), str(root / "missing.png")]


def _rows(out) -> list[dict]:
    return [json.loads(line) for line in open(out / "results.jsonl")]


def test_dask_run_survives_a_killed_worker_and_matches_the_local_run(setup, tmp_path, caplog):
    model, inputs = setup
    n_local, failed_local = predict_to_folder(model, inputs, tmp_path / "local")
    marker = tmp_path / "crashed"
    with caplog.at_level(logging.WARNING, logger="normalcy.apps.distributed"):
        n, failed = predict_distributed(model, inputs, tmp_path / "dask", workers=2, chunk_size=2,
                                        chunk_fn=functools.partial(crash_once, str(marker)))
    assert marker.exists()  # a worker really died mid-run
    resubmitted = {r.args[0] for r in caplog.records if r.name == "normalcy.apps.distributed"}
    assert resubmitted == {3}  # chunk 1 was rerun by Dask itself after its worker died; only chunk 3 by us
    local, dask_rows = _rows(tmp_path / "local"), _rows(tmp_path / "dask")
    assert [r["path"] for r in dask_rows] == [r["path"] for r in local]  # input order, no duplicates
    gave_up = [6, 7]  # chunk 3 (size 2) failed on every try: its images become error rows with the reason
    assert all(dask_rows[i]["status"] == "error" and "always fails" in dask_rows[i]["error"] for i in gave_up)
    assert n == n_local == 10 and failed_local == 2
    assert failed == 2 + sum(local[i]["status"] == "ok" for i in gave_up)
    keep = [i for i in range(n) if i not in gave_up]
    assert [dask_rows[i]["status"] for i in keep] == [local[i]["status"] for i in keep]
    ok = [i for i in keep if local[i]["status"] == "ok"]
    np.testing.assert_allclose([dask_rows[i]["score"] for i in ok], [local[i]["score"] for i in ok], rtol=1e-5)
    assert [dask_rows[i]["is_anomaly"] for i in ok] == [local[i]["is_anomaly"] for i in ok]
    assert all((tmp_path / "dask" / dask_rows[i]["overlay"]).is_file() for i in ok)
    with open(tmp_path / "dask" / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == n


def test_unreachable_scheduler_fails_fast_naming_the_address(setup, tmp_path, capsys):
    model, inputs = setup
    start = time.monotonic()
    with pytest.raises(ClusterError, match=r"tcp://127\.0\.0\.1:9"):
        predict_distributed(model, inputs, tmp_path / "o", scheduler="tcp://127.0.0.1:9", connect_timeout=2)
    code = main(["predict", str(model), *inputs, "-o", str(tmp_path / "o2"), "--engine", "dask",
                 "--scheduler", "tcp://127.0.0.1:9", "--connect-timeout", "2"])
    assert code == EXIT_ERROR and "tcp://127.0.0.1:9" in capsys.readouterr().err
    assert time.monotonic() - start < 20  # two bounded 2 s connection attempts, not a hang
