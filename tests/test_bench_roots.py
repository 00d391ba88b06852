"""`normalcy bench ROOT1 ROOT2`: one row per set plus the unweighted mean over the sets."""

from __future__ import annotations

import json

import pytest

from normalcy.apps.cli import EXIT_OK, main
from tests.conftest import write_mvtec

SMALL = ["--image-size", "64", "--param", "progress=false", "--timing-images", "1"]


def test_bench_several_roots_prints_rows_and_mean(tmp_path, capsys):
    a = write_mvtec(tmp_path / "a" / "blobs")
    b = write_mvtec(tmp_path / "b" / "spots", seed=1)
    out = tmp_path / "r.json"
    assert main(["bench", str(a), str(b), "--detector", "patchcore", "--json", str(out), *SMALL]) == EXIT_OK
    data = json.loads(out.read_text())
    assert [r["category"] for r in data["results"]] == ["blobs", "spots"]
    (mean,) = data["mean"]
    assert mean["category"] == "mean" and mean["detector"] == "patchcore"
    for key in ("image_auroc", "pixel_auroc", "aupro", "fit_s"):
        assert mean[key] == pytest.approx(sum(r[key] for r in data["results"]) / 2)
    assert "mean" in capsys.readouterr().out.splitlines()[-2]
