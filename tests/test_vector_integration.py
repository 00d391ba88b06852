"""Integration: the real ADBench sets from ../shared/data/tabular (skipped when that folder is absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from normalcy.apps.bench.vector import stratified_split
from normalcy.data.tables import read_table
from normalcy.detectors.vector import create_vector_detector
from normalcy.metrics import auroc

TABULAR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "tabular"


@pytest.mark.skipif(
    not (TABULAR / "6_cardio.npz").is_file(), reason=f"shared data not found at {TABULAR.resolve()}"
)
def test_cardio_knn_and_ecod():
    t = read_table(TABULAR / "6_cardio.npz")
    assert t.X.shape == (1831, 21) and int(t.y.sum()) == 176
    train, test = stratified_split(t.y, 0)
    X_fit = t.X[train][t.y[train] == 0]
    for name, floor in (("knn", 0.9), ("ecod", 0.9)):
        det = create_vector_detector(name).fit(X_fit)
        assert auroc(t.y[test], det.score(t.X[test]).scores) > floor, name
        p = np.array([q.p_value for q in det.predict(t.X[test][t.y[test] == 0], alpha=0.05)])
        assert np.mean(p <= 0.05) < 0.12  # calibrated on held-out normal rows
