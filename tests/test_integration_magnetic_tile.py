"""A small end-to-end run on the real Magnetic Tile folder (skipped when ../shared/data is absent)."""

from __future__ import annotations

import numpy as np
import pytest

from normalcy import metrics
from normalcy.apps.bench.images import masks_for
from normalcy.data import load_mvtec
from normalcy.detectors.image.patchcore import PatchCore
from tests.conftest import SHARED_DATA

TILE = SHARED_DATA / "magnetic_tile"
pytestmark = pytest.mark.skipif(not (TILE / "train" / "good").is_dir(),
                                reason=f"real data not found at {TILE} (it lives in ../shared/data beside the repo)")


def test_patchcore_on_a_few_real_tiles():
    train, test = load_mvtec(TILE)
    goods = [s for s in test if s.label == 0][:10]
    bads = [s for s in test if s.label == 1 and s.defect_type in ("blowhole", "break")][:10]
    det = PatchCore(progress=False).fit(train[:40])  # default 256 px: 0.89 here (0.54 without the border band)
    result = det.score(goods + bads)
    sizes = [np.asarray(m).shape for m in result.maps]
    from PIL import Image

    assert sizes == [Image.open(s.path).size[::-1] for s in goods + bads]  # maps at each image's own size
    labels = np.array([0] * len(goods) + [1] * len(bads))
    assert metrics.auroc(labels, result.scores) > 0.75
    pix = metrics.pixel_metrics(masks_for(goods + bads, result.maps), result.maps)
    assert pix["pixel_auroc"] > 0.8


@pytest.mark.parametrize("name", ["patchcore", "padim"])
def test_onnx_parity_on_real_tiles(name, tmp_path):
    """torch vs onnxruntime on real images: scores and maps within 1e-4 of the model's median normal score."""
    pytest.importorskip("onnxruntime")
    import normalcy
    from normalcy.apps.export import export_onnx, load_onnx

    train, test = load_mvtec(TILE)
    picked = [s for s in test if s.label == 0][:4] + [s for s in test if s.label == 1][:4]
    det = normalcy.create_detector(name, progress=False).fit(train[:30])
    onnx_model = load_onnx(export_onnx(det, tmp_path / f"{name}.onnx"), threads=1)
    a, b = det.score(picked), onnx_model.score(picked)
    tol = 1e-4 * max(1.0, float(np.median(det.calibration_.scores)))
    np.testing.assert_allclose(b.scores, a.scores, rtol=0, atol=tol)
    for ma, mb in zip(a.maps, b.maps):
        assert ma.shape == mb.shape
        np.testing.assert_allclose(mb, ma, rtol=0, atol=tol)
