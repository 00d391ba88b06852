"""ONNX on the default PatchCore of real Magnetic Tile tiles: the bank is large enough for the default IVF search,
and the exported graph finds the same neighbours and makes the same decisions as torch (skipped without data)."""

from __future__ import annotations

import numpy as np
import pytest

from normalcy.data import load_mvtec
from tests.conftest import SHARED_DATA

TILE = SHARED_DATA / "magnetic_tile"
pytestmark = pytest.mark.skipif(not (TILE / "train" / "good").is_dir(),
                                reason=f"real data not found at {TILE} (it lives in ../shared/data beside the repo)")
N_FIT = 300  # seeded subsample: its default 10 % coreset is over 16,384 rows, so the default search is IVF


def test_default_patchcore_onnx_same_neighbours_and_decisions(tmp_path):
    pytest.importorskip("onnxruntime")
    from normalcy.apps.export import export_onnx, load_onnx
    from normalcy.detectors.image.patchcore import PatchCore

    train, test = load_mvtec(TILE)
    rng = np.random.default_rng(0)
    fit = [train[i] for i in sorted(rng.choice(len(train), N_FIT, replace=False))]
    goods = [s for s in test if s.label == 0]
    bads = [s for s in test if s.label == 1]
    picked = [goods[i] for i in rng.choice(len(goods), 10, replace=False)]
    picked += [bads[i] for i in rng.choice(len(bads), 10, replace=False)]

    det = PatchCore(progress=False).fit(fit)
    assert {k: v for k, v in det.get_params().items() if k != "progress"} == \
        {k: v for k, v in PatchCore().get_params().items() if k != "progress"}  # the default configuration
    n_bank = det.memory_bank_.shape[0]
    assert det._search_mode(n_bank) == "ivf", f"bank of {n_bank} rows: searched exactly, raise N_FIT"
    onnx_model = load_onnx(export_onnx(det, tmp_path / "default.onnx"), threads=1)
    assert onnx_model.model_meta_["search"] == "ivf"

    a, b = det.score(picked), onnx_model.score(picked)
    tol = 1e-4 * float(np.median(det.calibration_.scores))
    np.testing.assert_allclose(b.scores, a.scores, rtol=0, atol=tol)
    for ma, mb in zip(a.maps, b.maps):  # every patch's nearest-neighbour distance: the same neighbours
        np.testing.assert_allclose(mb, ma, rtol=0, atol=tol)
    pa, pb = det.decide(a), onnx_model.decide(b)
    assert [p.is_anomaly for p in pb] == [p.is_anomaly for p in pa]
    assert [p.p_value for p in pb] == [p.p_value for p in pa]
    # masks threshold maps that agree within `tol`: a pixel may differ only where its value is that close to the bar
    bar = det.calibration_.pixel_threshold(det.pixel_fpr)
    for x, y, ma in zip(pa, pb, a.maps):
        differ = x.mask != y.mask
        assert differ.sum() <= 0.001 * differ.size and np.all(np.abs(ma[differ] - bar) <= tol)
