"""resize_mode="aspect": one canvas of ~image_size² pixels shaped like the fit images, kept by the model file."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from normalcy.detectors import create_detector
from normalcy.errors import NotFittedError, ParameterError
from normalcy.features.preprocess import aspect_canvas, canvas_hw, prepare_batch, restore_maps, valid_grid
from normalcy.store import load
from tests.conftest import texture


def test_aspect_canvas_keeps_the_area_and_the_shape():
    assert aspect_canvas(1.0, 256) == (256, 256)
    assert aspect_canvas(2.5, 256) == (416, 160)  # a 640×250 part: same area as 256², no 2.5× squash
    h, w = aspect_canvas(1 / 3, 256, multiple=16)
    assert h % 16 == 0 and w % 16 == 0 and abs(h * w / 256**2 - 1) < 0.1 and w > h
    assert canvas_hw(64) == (64, 64) and canvas_hw((96, 32)) == (96, 32)
    with pytest.raises(ParameterError):
        aspect_canvas(0.0, 256)


def test_pipeline_on_a_non_square_canvas():
    images = [np.zeros((100, 40, 3), np.uint8), np.zeros((50, 50, 3), np.uint8)]
    x, placements = prepare_batch(images, (96, 32), "stretch")
    assert x.shape == (2, 3, 96, 32)
    assert valid_grid(placements, (96, 32), (12, 4)).all()
    _, padded = prepare_batch(images[1:], (96, 32), "pad")  # a square image on a tall canvas: padded cells
    valid = valid_grid(padded, (96, 32), (12, 4))
    assert 0 < valid.sum() < valid.numel()
    maps = restore_maps(torch.rand(2, 12, 4), placements, (96, 32), sigma=1.0)
    assert [m.shape for m in maps] == [(100, 40), (50, 50)]


def test_patchcore_fits_a_tall_canvas_and_keeps_it(tmp_path):
    rng = np.random.default_rng(0)
    tall = [np.concatenate([texture(rng), texture(rng)], axis=0) for _ in range(10)]  # 128×64
    det = create_detector("patchcore", image_size=64, resize_mode="aspect", progress=False, calibration_fraction=0.0)
    with pytest.raises(NotFittedError):
        _ = det.canvas
    det.fit(tall)
    assert det.canvas == aspect_canvas(2.0, 64) and det.canvas[0] > det.canvas[1]
    res = det.score(tall[:2])
    assert [m.shape for m in res.maps] == [(128, 64)] * 2
    again = load(det.save(tmp_path / "m.normalcy"))
    assert again.canvas == det.canvas
    assert np.allclose(again.score(tall[:2]).scores, res.scores, rtol=1e-5)
    square = create_detector("patchcore", image_size=64, resize_mode="stretch", progress=False)
    assert square.canvas == (64, 64)  # the other modes never need a fit to know their canvas


def test_default_patchcore_exports_to_onnx_with_its_canvas_and_fusion(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from normalcy.apps.export import export_onnx, load_onnx

    rng = np.random.default_rng(1)
    tall = [np.concatenate([texture(rng), texture(rng)], axis=0) for _ in range(10)]
    det = create_detector("patchcore", image_size=64, progress=False, calibration_fraction=0.0).fit(tall)
    assert det.resize_mode == "aspect" and det._fusion is not None and det._stats is not None  # the defaults
    onnx_model = load_onnx(export_onnx(det, tmp_path / "m.onnx"), threads=1)
    probe = tall[:2] + [np.ascontiguousarray(tall[2][:100, :50])]  # another size: fitted to the same canvas
    a, b = det.score(probe), onnx_model.score(probe)
    np.testing.assert_allclose(b.scores, a.scores, rtol=1e-4, atol=1e-3)
    for ma, mb in zip(a.maps, b.maps):
        assert ma.shape == mb.shape
        np.testing.assert_allclose(mb, ma, rtol=1e-3, atol=1e-2)  # z-scored maps: float32 distance noise
