"""Severity: Spearman against scipy, the severity.csv format, and the bench row fields it adds."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from normalcy.apps.bench.images import run_image_bench
from normalcy.calibration.severity import rank, read_severity, severity_fields, spearman
from normalcy.errors import DataError
from normalcy.synth.anomalies import cut_paste, perlin_blend, quantize
from normalcy.synth.folders import synthesize
from tests.conftest import texture


def test_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(0)
    for n in (5, 30, 200):
        x = rng.integers(1, 6, n).astype(float)  # severity levels: many ties
        y = x + rng.normal(0, 2, n)
        y[: n // 4] = np.round(y[: n // 4])
        rho, p = spearman(x, y)
        ref = stats.spearmanr(x, y)
        assert rho == pytest.approx(ref.statistic, abs=1e-12)
        assert p == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-300)
        np.testing.assert_allclose(rank(y), stats.rankdata(y))
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == (1.0, 0.0)
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3])[0])
    with pytest.raises(DataError):
        spearman([1, 2, 3], [1, 2])


@pytest.mark.parametrize("fn", [perlin_blend, cut_paste])
def test_higher_severity_changes_more(fn):
    rng = np.random.default_rng(0)
    base, donor = (texture(rng)[..., :1].astype(np.float32) / 255 for _ in range(2))

    def change(level: float) -> float:
        total = 0.0
        for seed in range(8):
            img, _ = fn(base, donor, np.random.default_rng(seed), severity=level)
            total += np.abs(quantize(img).astype(int) - quantize(base)).sum()
        return total

    amounts = [change(level) for level in (0.2, 0.6, 1.0)]
    assert amounts[0] < amounts[1] < amounts[2]


def test_read_severity_format(tmp_path):
    assert read_severity(tmp_path) is None
    (tmp_path / "severity.csv").write_text("path,severity\ntest/a/000.png,2\n")
    assert read_severity(tmp_path) == {str((tmp_path / "test/a/000.png").absolute()): 2.0}
    (tmp_path / "severity.csv").write_text("file,level\nx.png,1\n")
    with pytest.raises(DataError, match="path,severity"):
        read_severity(tmp_path)
    (tmp_path / "severity.csv").write_text("path,severity\nx.png,high\n")
    with pytest.raises(DataError, match="line 2"):
        read_severity(tmp_path)
    (tmp_path / "severity.csv").write_text("path,severity\nx.png,1\n")
    with pytest.raises(DataError, match="lists no image"):
        severity_fields(tmp_path, [tmp_path / "y.png"], np.zeros(1))


def test_bench_row_gets_severity_fields(tmp_path):
    rng = np.random.default_rng(0)
    normal = tmp_path / "normal"
    normal.mkdir()
    for i in range(16):
        Image.fromarray(texture(rng)[..., 0]).save(normal / f"{i:02d}.png")
    synthesize(normal, tmp_path / "cat", n=12, seed=0, severity_levels=3, train_fraction=0.6)
    out = tmp_path / "r.json"
    rows = run_image_bench(tmp_path / "cat", ["gaussian"], {"image_size": 64, "progress": False, "alpha": 0.2},
                           out, timing_images=1, echo=lambda *a: None)
    row = json.loads(out.read_text())["results"][0]
    assert row["severity_n"] == 12
    assert -1 <= row["severity_spearman"] <= 1 and 0 <= row["severity_spearman_pvalue"] <= 1
    assert -1 <= row["severity_spearman_conformal"] <= 1
    assert rows[0]["severity_spearman"] == pytest.approx(row["severity_spearman"])
